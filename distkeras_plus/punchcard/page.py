"""The read-only web page: static HTML and a script that asks for the user's token, keeps it in
the tab's sessionStorage (never in a URL or cookie, so it is not sent unless the script sends it)
and lists the user's jobs through the JSON API. Everything shown is set as text, never as HTML."""

INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Punchcard jobs</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .7em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
.state { font-weight: 600; }
.queued { color: #777; } .running { color: #0a58ca; } .succeeded { color: #198754; }
.failed { color: #b02a37; } .cancelled { color: #a66b00; }
#login[hidden], #jobs-view[hidden] { display: none; }
#error { color: #b02a37; min-height: 1.2em; }
code { font-size: 12px; }
</style>
</head>
<body>
<h1>Punchcard jobs</h1>
<p id="error" role="alert"></p>
<form id="login" hidden>
  <label>Token <input id="token" type="password" autocomplete="off" size="50" required></label>
  <button id="sign-in" type="submit">Show my jobs</button>
</form>
<div id="jobs-view" hidden>
  <p><span id="who"></span> <span id="updated"></span>
  <button id="sign-out" type="button">Sign out</button></p>
  <table>
    <thead><tr><th>Job</th><th>Name</th><th>Optimizer</th><th>State</th><th>Progress</th>
    <th>Created</th><th>Started</th><th>Finished</th></tr></thead>
    <tbody id="jobs"></tbody>
  </table>
  <p id="empty" hidden>No jobs yet: submit one with <code>dk submit SPEC.json --model M.keras</code>.</p>
</div>
<script src="/app.js"></script>
</body>
</html>
"""

SCRIPT = """"use strict";
const KEY = "punchcard-token";
const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

function progressText(job) {
  if (job.state === "succeeded" && job.result) {
    const r = job.result;
    return "test accuracy " + Number(r.test_accuracy).toFixed(4) + ", " + r.samples + " samples in "
      + Number(r.seconds).toFixed(1) + " s";
  }
  if ((job.state === "failed" || job.state === "cancelled") && job.reason) return job.reason;
  if (job.state === "queued") {
    return job.queue_position ? "position " + job.queue_position + " in the queue" : "";
  }
  const p = job.progress;
  if (!p) return job.state === "running" ? "starting" : "";
  const parts = [];
  if (p.epoch != null) parts.push("epoch " + p.epoch);
  if (p.samples != null) parts.push(p.samples + " samples");
  if (p.commits != null) parts.push(p.commits + " commits");
  if (p.loss != null) parts.push("loss " + Number(p.loss).toFixed(4));
  if (p.seconds != null) parts.push(Number(p.seconds).toFixed(0) + " s");
  return parts.join(", ");
}

function render(jobs) {
  const body = $("jobs");
  body.replaceChildren();
  for (const job of jobs) {
    const row = body.insertRow();
    row.dataset.jobId = job.id;
    row.dataset.state = job.state;
    cell(row, job.id.slice(0, 12), "id").title = job.id;
    cell(row, job.name, "name");
    cell(row, job.spec.plugin, "plugin");
    cell(row, job.state + (job.cancel_requested && job.state === "running" ? " (cancelling)" : ""),
      "state " + job.state);
    cell(row, progressText(job), "progress");
    cell(row, when(job.created));
    cell(row, when(job.started));
    cell(row, when(job.finished));
  }
  $("empty").hidden = jobs.length > 0;
}

function signedOut(message) {
  sessionStorage.removeItem(KEY);
  $("jobs-view").hidden = true;
  $("login").hidden = false;
  $("error").textContent = message || "";
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(KEY);
  if (!token) { signedOut(); return; }
  try {
    const response = await fetch("/jobs", { headers: { Authorization: "Bearer " + token } });
    const body = await response.json();
    if (response.status === 401) { signedOut("The server did not accept that token."); return; }
    if (!response.ok) throw new Error(body.error || response.statusText);
    $("login").hidden = true;
    $("jobs-view").hidden = false;
    $("error").textContent = "";
    $("who").textContent = "Jobs of " + body.user + ".";
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    render(body.jobs);
  } catch (e) {
    $("error").textContent = "Cannot list jobs: " + e.message;
  }
  timer = setTimeout(refresh, 2000);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
});
$("sign-out").addEventListener("click", () => { clearTimeout(timer); signedOut(); });
refresh();
"""
