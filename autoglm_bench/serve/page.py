"""The page at /: pick a task and a model, fill in the template's fields, see the prompt's answer and, for
multiple choice, each choice's log-likelihood. ``/?task=NAME&input=JSON&run=1`` fills it in and runs it."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>autoglm-bench</title>
<style>
body { font-family: sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
label { display: block; margin-top: .6rem; font-weight: bold; }
textarea, select { width: 100%; font-family: monospace; }
pre { background: #f4f4f4; padding: .5rem; white-space: pre-wrap; }
table { border-collapse: collapse; margin-top: .5rem; }
td, th { border: 1px solid #ccc; padding: .2rem .6rem; text-align: left; }
tr.best { background: #e3f4e3; }
#error { color: #b00020; }
</style>
</head>
<body>
<h1>autoglm-bench</h1>
<label for="task">Task</label><select id="task"></select>
<label for="model">Model</label><select id="model"></select>
<div>Template:</div><pre id="template"></pre>
<div id="fields"></div>
<p><button id="run">Run</button></p>
<p id="error"></p>
<div id="result"></div>
<script>
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const given = params.get("input") ? JSON.parse(params.get("input")) : {};

function option(select, value) {
  const o = document.createElement("option");
  o.value = o.textContent = value;
  select.appendChild(o);
}

async function getJSON(url, body) {
  const init = body ? {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)} : {};
  const r = await fetch(url, init);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function showTask() {
  $("error").textContent = "";
  const info = await getJSON("/tasks/" + encodeURIComponent($("task").value));
  $("template").textContent = info.template;
  $("fields").innerHTML = "";
  for (const f of info.fields) {
    const label = document.createElement("label");
    label.textContent = f;
    const area = document.createElement("textarea");
    area.rows = 2;
    area.dataset.field = f;
    area.value = given[f] !== undefined ? given[f] : "";
    $("fields").append(label, area);
  }
}

async function run() {
  $("error").textContent = "";
  $("result").innerHTML = "";
  const input = {};
  for (const area of document.querySelectorAll("#fields textarea")) input[area.dataset.field] = area.value;
  try {
    const out = await getJSON("/task", {task: $("task").value, model: $("model").value, input});
    const result = $("result");
    if (out.choices) {
      const p = document.createElement("p");
      p.innerHTML = "Answer: <b id='label'></b>";
      result.appendChild(p);
      $("label").textContent = out.label;
      const table = document.createElement("table");
      table.id = "scores";
      table.innerHTML = "<tr><th>choice</th><th>log-likelihood</th></tr>";
      out.choices.forEach((c, i) => {
        const row = table.insertRow();
        if (i === out.prediction) row.className = "best";
        row.insertCell().textContent = c;
        row.insertCell().textContent = out.loglikelihoods[i].toFixed(4);
      });
      result.appendChild(table);
    } else {
      const pre = document.createElement("pre");
      pre.id = "output";
      pre.textContent = out.output + "\\n\\nanswer: " + out.answer;
      result.appendChild(pre);
    }
  } catch (e) {
    $("error").textContent = e.message;
  }
}

(async () => {
  const listing = await getJSON("/tasks");
  listing.tasks.forEach((t) => option($("task"), t));
  listing.models.forEach((m) => option($("model"), m));
  $("task").value = params.get("task") || listing.default;
  await showTask();
  $("task").addEventListener("change", showTask);
  $("run").addEventListener("click", run);
  if (params.get("run")) await run();
})();
</script>
</body>
</html>
"""
