// Field errors in plain words, next to the field: what the browser checks before sending, and what the hub
// answered (its validation messages name a pattern; people get a sentence instead).

import { ApiError } from "./api.js";
import { setText } from "./ui.js";

/** What each field accepts, said plainly (shown when the value does not fit). */
export const FIELD_HELP = {
  name: "Use lower-case letters, digits and hyphens (1–63 characters), starting and ending with a letter or digit.",
  image: "Give an image name such as registry.example.com/team/ide:1.2 (letters, digits and . _ / : @ -).",
  git_url: "Give an https:// or ssh:// address, or user@host:path.",
  git_ref: "Give a branch, tag or commit: letters, digits and . _ / - only.",
  cpu: "Give a number of CPUs above 0.",
  memory_mb: "Give the memory in MiB, at least 64.",
  token_name: "Keep the name under 100 characters.",
  username: "Use 1–64 of a-z, 0-9, '_', '.' and '-'.",
  password: "Use 8 to 1024 characters.",
  docker_url: "Give unix:///path/to/docker.sock or tcp://host:port.",
  kubeconfig: "Give the absolute path of a kubeconfig file on the hub, or in-cluster.",
  namespace: "Use lower-case letters, digits and hyphens (1–63 characters), starting and ending with a letter or digit.",
  max_workspaces: "Give a whole number from 1 to 100,000.",
  public_host: "Give a host name or IP address (letters, digits, '.', ':', '-'), or leave it empty for none.",
  labels: "Write labels as key=value, separated by commas (keys up to 64 characters, values up to 255).",
};

// hub error codes that belong to one field; their detail is already written for people
const CODE_FIELD = {
  bad_git_url: "git_url",
  git_url_forbidden: "git_url",
  already_cloned: "git_url",
  no_repository: "git_url",
  name_taken: "name",
  bad_username: "username",
  user_exists: "username",
  bad_password: "password",
  unknown_server: "server_id",
  server_draining: "server_id",
  bad_docker_url: "docker_url",
  server_busy: "enabled",
  bad_kubeconfig: "kubeconfig",
  bad_namespace: "namespace",
  unknown_template: "template",
  template_archived: "template",
  template_not_allowed: "template",
  image_missing: "template",
  image_set: "image",
};

function errorNode(form, key) {
  const input = form.elements[key];
  if (!input) return null;
  const id = `${form.id}-${key}-error`;
  let node = document.getElementById(id);
  if (!node) {
    node = document.createElement("p");
    node.id = id;
    node.className = "field-error";
    node.hidden = true;
    const field = input.closest(".field");
    if (field) field.append(node);
    else (input.closest("label") || input).after(node);
  }
  return node;
}

/** Show `text` under the field `key` of `form` and mark it invalid for assistive technology. */
export function showFieldError(form, key, text) {
  const input = form.elements[key];
  const node = errorNode(form, key);
  if (!input || !node) return false;
  setText(node, text);
  node.hidden = false;
  input.setAttribute("aria-invalid", "true");
  input.setAttribute("aria-describedby", node.id);
  return true;
}

/** Remove every field error of `form`. */
export function clearFieldErrors(form) {
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const node of form.querySelectorAll(".field-error")) {
    node.hidden = true;
    setText(node, "");
  }
}

/** Check the fields the browser can (patterns, lengths) and show plain errors; true when all fit. */
export function checkFields(form, keys) {
  let first = null;
  for (const key of keys) {
    const input = form.elements[key];
    if (!input || input.value.trim() === "" || input.checkValidity()) continue;
    showFieldError(form, key, input.dataset.help || FIELD_HELP[key] || "This value does not fit.");
    first = first || input;
  }
  if (first) first.focus();
  return first === null;
}

/** Put an API error next to its field(s) of `form`; false when it belongs to no field (show it elsewhere). */
export function showApiError(form, err) {
  if (!(err instanceof ApiError)) return false;
  let shown = false;
  for (const item of err.body.errors || []) {
    const key = String(item.key || "").split(".")[0];
    const input = key ? form.elements[key] : null;
    if (input) shown = showFieldError(form, key, input.dataset.help || FIELD_HELP[key] || plain(item.message)) || shown;
  }
  let key = CODE_FIELD[err.code];
  if (err.code === "bad_resources") key = err.message.startsWith("cpu") ? "cpu" : "memory_mb";
  if (err.code === "outside_template_bounds") key = err.message.includes("CPU") ? "cpu" : "memory_mb";
  if (key && form.elements[key]) shown = showFieldError(form, key, err.message) || shown;
  if (shown) form.querySelector("[aria-invalid=true]")?.focus();
  return shown;
}

/** A hub message with any validator pattern left out. */
export function plain(message) {
  return String(message || "").replace(/ matching regex '.*?'/g, " in the expected form");
}
