// The terminal page: xterm.js joined to WS /ws/workspaces/{id} (binary frames both ways; resize as JSON text).
// The session cookie authenticates the socket; the hub refuses before the upgrade when it may not open.

import { FitAddon } from "/vendor/addon-fit.mjs";
import { Terminal } from "/vendor/xterm.mjs";

const status = document.getElementById("term-status");
const params = new URLSearchParams(location.search);
const workspaceId = params.get("workspace") || "";

function say(text, state = "") {
  status.textContent = text;
  status.dataset.state = state;
  window.parent?.postMessage({ type: "codehub.terminal", workspace: workspaceId, state, text }, location.origin);
}

const term = new Terminal({
  cursorBlink: true,
  convertEol: false,
  fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace',
  fontSize: 13,
  scrollback: 5000,
  theme: { background: "#0f141a", foreground: "#d7dde5" },
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open(document.getElementById("term"));
fit.fit();
window.codehubTerminal = term; // tests read the screen buffer

const encoder = new TextEncoder();
let socket = null;

function connect() {
  if (!workspaceId) {
    say("No workspace given.", "closed");
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ cols: String(term.cols), rows: String(term.rows) });
  const url = `${scheme}://${location.host}/ws/workspaces/${encodeURIComponent(workspaceId)}?${query}`;
  say("connecting…", "connecting");
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  let opened = false;
  let exitCode = null;
  socket.onopen = () => {
    opened = true;
    say("", "open");
    term.focus();
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    try {
      const message = JSON.parse(event.data);
      if (message.type === "exit") exitCode = message.exit_code;
    } catch {
      term.write(event.data);
    }
  };
  socket.onclose = (event) => {
    socket = null;
    if (exitCode !== null) say(`The shell exited (code ${exitCode}). Press Enter to open a new one.`, "closed");
    else if (!opened) say("The terminal could not open: is the workspace running? Press Enter to retry.", "closed");
    else say(`The connection closed${event.reason ? `: ${event.reason}` : ""}. Press Enter to reconnect.`, "closed");
  };
}

term.onData((data) => {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  else if (!socket && data === "\r") connect();
});
term.onResize(({ cols, rows }) => {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "resize", cols, rows }));
});
new ResizeObserver(() => fit.fit()).observe(document.getElementById("term"));

connect();
