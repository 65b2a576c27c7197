// The playground: POST /v1/solve with "stream": true, read its Server-Sent Events with fetch and a
// stream reader (EventSource cannot POST), and draw the trajectory as it arrives.
//
// Everything the model or the server sends is put on the page as text (textContent), never as
// HTML, so hostile model output cannot script the page; the server's Content-Security-Policy
// allows only this file's script besides.
"use strict";

(() => {
  const KEY_STORE = "mathcoder.playground.apiKey";
  const $ = (id) => document.getElementById(id);
  const form = $("solve-form");
  const problemInput = $("problem");
  const keyInput = $("api-key");
  const solveButton = $("solve");
  const stopButton = $("stop");
  const statusLine = $("status");
  const resultBox = $("result");
  const answerLine = $("answer");
  const stopReasonLine = $("stop-reason");
  const statsList = $("stats");
  const errorBox = $("error");
  const transcript = $("transcript");

  let controller = null; // the AbortController of the solve in flight

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setState(state, message) {
    document.body.dataset.state = state; // idle | running | done | failed | stopped
    statusLine.textContent = message;
  }

  // -- the API key, kept in this browser's localStorage -------------------------------------------
  try {
    keyInput.value = localStorage.getItem(KEY_STORE) || "";
  } catch (_) {
    // storage disabled: the key lives as long as the page
  }
  keyInput.addEventListener("input", () => {
    try {
      localStorage.setItem(KEY_STORE, keyInput.value);
    } catch (_) {
      // as above
    }
  });

  // -- the transcript: prose blocks and cells, in the order they arrive ---------------------------
  class Transcript {
    constructor(root) {
      this.root = root;
      this.prose = null; // the prose block that deltas extend (null after a cell)
      this.cells = new Map();
      this.sawProse = false;
    }

    clear() {
      this.root.replaceChildren();
      this.prose = null;
      this.cells.clear();
      this.sawProse = false;
    }

    addProse(text) {
      if (!text) return;
      if (this.prose === null) {
        this.prose = element("div", "prose");
        this.root.append(this.prose);
      }
      this.prose.textContent += text;
      this.sawProse = true;
    }

    cell(index) {
      let cell = this.cells.get(index);
      if (cell === undefined) {
        const box = element("div", "cell");
        box.dataset.index = String(index);
        const head = element("div", "cell-head");
        const label = element("span", "cell-label", `In [${index + 1}]`);
        const badge = element("span", "badge", "writing");
        head.append(label, badge);
        const code = element("pre", "code");
        const output = element("pre", "output");
        output.hidden = true;
        box.append(head, code, output);
        this.root.append(box);
        cell = { box, badge, code, output };
        this.cells.set(index, cell);
      }
      this.prose = null;
      return cell;
    }

    codeDelta(index, text) {
      this.cell(index).code.textContent += text;
    }

    code(index, code) {
      const cell = this.cell(index);
      cell.code.textContent = code; // the closed cell replaces what was streamed
      cell.box.classList.add("closed");
      cell.badge.textContent = "written";
    }

    started(index) {
      const cell = this.cell(index);
      cell.box.classList.add("running");
      cell.badge.textContent = "running";
    }

    executed(index, status, output) {
      const cell = this.cell(index);
      const ok = status === "ok";
      cell.box.classList.remove("running");
      cell.box.classList.add(ok ? "ok" : "failed");
      cell.badge.textContent = status;
      cell.output.dataset.status = status;
      cell.output.classList.toggle("failed", !ok);
      cell.output.textContent = output === "" ? "(no output)" : output;
      cell.output.hidden = false;
    }

    // The whole trajectory from the final trace: used when the stream carried no prose deltas
    // (a loop that reports only raw text), so that the prose shows all the same.
    fromTrace(trace) {
      this.clear();
      let index = -1;
      for (const block of trace.blocks || []) {
        if (block.kind === "text") {
          this.addProse(block.text);
        } else if (block.kind === "code") {
          index += 1;
          this.code(index, block.code);
        } else if (block.kind === "output" && index >= 0) {
          this.executed(index, block.status || "ok", block.output);
        }
      }
    }
  }

  const view = new Transcript(transcript);

  // -- the answer and the numbers --------------------------------------------------------------
  const STATS = [
    ["prompt_tokens", "prompt tokens", (v) => String(v)],
    ["completion_tokens", "completion tokens", (v) => String(v)],
    ["cells", "cells run", (v) => String(v)],
    ["queue_s", "queued", seconds],
    ["generate_s", "generating", seconds],
    ["execute_s", "executing", seconds],
    ["total_s", "total", seconds],
  ];

  function seconds(value) {
    return `${Number(value).toFixed(2)} s`;
  }

  function showStats(numbers) {
    statsList.replaceChildren();
    for (const [key, label, format] of STATS) {
      if (numbers[key] === undefined || numbers[key] === null) continue;
      const item = element("div", "stat");
      item.dataset.key = key;
      item.append(element("dt", "", label), element("dd", "", format(numbers[key])));
      statsList.append(item);
    }
  }

  function showFinal(event, run) {
    const metadata = (event.trace && event.trace.metadata) || {};
    run.numbers = { ...(metadata.usage || {}), ...(metadata.timings || {}) };
    if (!view.sawProse && event.trace) view.fromTrace(event.trace);
    const found = event.answer !== null && event.answer !== undefined;
    answerLine.textContent = found ? event.answer : "no answer";
    answerLine.classList.toggle("none", !found);
    stopReasonLine.textContent = `stopped: ${event.stop_reason}`;
    showStats(run.numbers);
    resultBox.hidden = false;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  // -- the event stream ------------------------------------------------------------------------
  function handle(type, data, run) {
    switch (type) {
      case "prose_delta":
        view.addProse(data.text);
        break;
      case "code_delta":
        view.codeDelta(data.index, data.text);
        break;
      case "code":
        view.code(data.index, data.code);
        break;
      case "execution_started":
        view.started(data.index);
        break;
      case "execution":
        view.executed(data.index, (data.result && data.result.status) || "unknown", data.output);
        break;
      case "final":
        run.final = data;
        showFinal(data, run);
        break;
      case "error":
        run.error = data.message;
        showError(data.message);
        break;
      case "done":
        run.done = data;
        run.numbers = { ...run.numbers, ...(data.timings || {}) };
        if (run.final) showStats(run.numbers);
        break;
      default:
        break; // "text" (raw model text, delimiters included) and anything newer
    }
  }

  function parseFrame(block) {
    let type = "message";
    const data = [];
    for (const raw of block.split("\n")) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "" || line.startsWith(":")) continue; // ": keep-alive" comments
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    return data.length ? { type, data: data.join("\n") } : null;
  }

  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = parseFrame(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (frame !== null) onEvent(frame.type, JSON.parse(frame.data));
      }
    }
  }

  async function describeFailure(response) {
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = `${response.status}: ${body.error.message}`;
    } catch (_) {
      // not JSON: the status line says enough
    }
    if (response.status === 401) message += " (set the API key above)";
    return message;
  }

  // -- a solve ---------------------------------------------------------------------------------
  async function solve(problem) {
    controller = new AbortController();
    view.clear();
    resultBox.hidden = true;
    errorBox.hidden = true;
    answerLine.textContent = "";
    stopReasonLine.textContent = "";
    statsList.replaceChildren();
    solveButton.disabled = true;
    stopButton.disabled = false;
    const started = performance.now();
    const elapsed = () => ((performance.now() - started) / 1000).toFixed(1);
    setState("running", "Solving…");
    const ticker = setInterval(() => {
      statusLine.textContent = `Solving… ${elapsed()} s`;
    }, 200);
    const run = { final: null, error: null, done: null, numbers: {} };
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const key = keyInput.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    try {
      const response = await fetch("/v1/solve", {
        method: "POST",
        headers,
        body: JSON.stringify({ problem, stream: true }),
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) throw new Error(await describeFailure(response));
      await readEvents(response.body, (type, data) => handle(type, data, run));
      if (run.done === null) throw new Error("the stream ended before its end marker (did the server stop?)");
      if (run.final !== null) setState("done", `Done in ${elapsed()} s.`);
      else setState("failed", run.error ? "Failed." : "Ended without an answer.");
    } catch (err) {
      if (err && err.name === "AbortError") {
        setState("stopped", `Stopped after ${elapsed()} s.`);
      } else {
        showError(String((err && err.message) || err));
        setState("failed", "Failed.");
      }
    } finally {
      clearInterval(ticker);
      controller = null;
      solveButton.disabled = false;
      stopButton.disabled = true;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const problem = problemInput.value.trim();
    if (problem && controller === null) solve(problem);
  });
  stopButton.addEventListener("click", () => {
    if (controller !== null) controller.abort();
  });
  problemInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  setState("idle", "Ready.");
})();
