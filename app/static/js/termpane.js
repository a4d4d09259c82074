// The terminal pane in Details: frames /terminal?workspace=<id> (xterm.js on the workspace's shell socket).

import { $, setText } from "./ui.js";

export const TERMINAL_MISSING =
  "The terminal's browser assets are not installed on this hub. Install them with `just assets` " +
  "(runs npm ci in web/), then reload this page.";

export class TerminalPane {
  constructor(app) {
    this.app = app;
    this.id = null;
    this.installed = document.body.dataset.terminal !== "missing";
    $("#term-close").addEventListener("click", () => this.close());
    window.addEventListener("message", (event) => {
      if (event.origin !== location.origin || event.data?.type !== "codehub.terminal") return;
      if (event.data.workspace === this.id) setText($("#term-state"), event.data.text || "connected");
    });
  }

  /** Open a shell of workspace `id` (it must be running) in the pane and bring the pane into view. */
  open(id) {
    const pane = $("#term-pane");
    pane.hidden = false;
    $("#term-missing").hidden = this.installed;
    setText($("#term-missing"), this.installed ? "" : TERMINAL_MISSING);
    const frame = $("#term-frame");
    frame.hidden = !this.installed;
    if (this.installed && (this.id !== id || !frame.getAttribute("src"))) {
      setText($("#term-state"), "connecting…");
      frame.src = `/terminal?workspace=${encodeURIComponent(id)}`;
    }
    this.id = id;
    pane.scrollIntoView({ block: "nearest", behavior: "smooth" });
    if (this.installed) frame.focus();
  }

  /** Hang up and hide the pane. */
  close() {
    this.id = null;
    const frame = $("#term-frame");
    frame.removeAttribute("src");
    frame.src = "about:blank";
    $("#term-pane").hidden = true;
    setText($("#term-state"), "");
  }

  /** The selection moved to another workspace: this shell belongs to the previous one. */
  selected(id) {
    if (this.id && this.id !== id) this.close();
  }
}
