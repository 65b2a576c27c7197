"""Helpers the test modules share (not tests themselves): paths, fakes, harnesses, data."""
