// The edit dialog: image, git URL and ref of a workspace that is not running (PATCH /api/workspaces/{id}).

import { api } from "./api.js";
import { checkFields, clearFieldErrors, showApiError } from "./forms.js";
import { $, setText, toast } from "./ui.js";

export const EDITABLE = new Set(["created", "stopped", "failed"]);

export class EditDialog {
  constructor(app) {
    this.app = app;
    this.ws = null;
    this.form = $("#edit-form");
    this.form.addEventListener("submit", (e) => this.save(e));
    $("#edit-cancel").addEventListener("click", () => $("#edit").close());
  }

  open(ws) {
    this.ws = ws;
    const form = this.form;
    clearFieldErrors(form);
    $("#edit-error").hidden = true;
    setText($("#edit-title"), `Edit ${ws.name || ws.id}`);
    setText(
      $("#edit-note"),
      "The image applies at the next start. The repository can change until the workspace's files hold a clone; " +
        "it is cloned right away.",
    );
    form.image.value = ws.image || "";
    form.git_url.value = ws.git_url || "";
    form.git_ref.value = ws.git_ref || "";
    $("#edit").showModal();
    form.image.focus();
  }

  async save(e) {
    e.preventDefault();
    const form = this.form;
    const ws = this.ws;
    clearFieldErrors(form);
    $("#edit-error").hidden = true;
    if (!checkFields(form, ["image", "git_url", "git_ref"])) return;
    const body = {};
    const image = form.image.value.trim();
    const gitUrl = form.git_url.value.trim();
    const gitRef = form.git_ref.value.trim();
    if (image && image !== ws.image) body.image = image;
    if (gitUrl && gitUrl !== (ws.git_url || "")) body.git_url = gitUrl;
    if (gitRef && gitRef !== (ws.git_ref || "")) body.git_ref = gitRef;
    if (Object.keys(body).length === 0) {
      $("#edit").close();
      return;
    }
    const save = $("#edit-save");
    save.disabled = true;
    try {
      const updated = await api("PATCH", `/api/workspaces/${encodeURIComponent(ws.id)}`, { body, quiet: true });
      this.app.workspaces.upsert(updated);
      $("#edit").close();
      toast(`${updated.name} saved`, { kind: "info" });
    } catch (err) {
      if (!showApiError(form, err)) {
        $("#edit-error").hidden = false;
        setText($("#edit-error"), err.message);
      }
    } finally {
      save.disabled = false;
    }
  }
}
