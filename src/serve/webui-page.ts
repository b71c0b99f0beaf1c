// The web UI (`tsft web-ui`): one static page with inline CSS and JS, no framework, served at `/` by
// the same server as the OpenAI API. It streams from POST /v1/chat/completions (SSE) and renders model
// output with textContent only, so answers can never inject HTML. Kept as a string constant so that
// tsx, tslab and bundles all serve it without locating files on disk; the server replaces
// `/*TSFT_CONFIG*/null` with the page's settings (language, model name, defaults).
// (No backquotes or dollar-brace in the page: it lives inside a template literal.)

export const WEB_UI_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tsft web-ui</title>
<style>
  :root { --fg: #1d2330; --muted: #6b7280; --line: #e5e7eb; --accent: #4f46e5; --bg: #f8fafc; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "PingFang SC", "Microsoft YaHei", sans-serif; color: var(--fg); background: var(--bg); }
  header { padding: 10px 18px; border-bottom: 1px solid var(--line); background: #fff; display: flex; gap: 12px; align-items: baseline; }
  header h1 { font-size: 17px; margin: 0; }
  header .model { color: var(--muted); font-size: 13px; }
  main { display: grid; grid-template-columns: 280px 1fr; gap: 16px; padding: 16px; max-width: 1200px; margin: 0 auto; height: calc(100vh - 50px); }
  aside { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px; display: flex; flex-direction: column; gap: 12px; overflow: auto; }
  label { display: flex; flex-direction: column; gap: 4px; font-size: 13px; color: var(--muted); }
  textarea, input { font: inherit; color: var(--fg); border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; background: #fff; }
  section.chat { display: flex; flex-direction: column; min-height: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
  #messages { flex: 1; overflow: auto; padding: 14px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 85%; padding: 8px 12px; border-radius: 8px; white-space: pre-wrap; word-break: break-word; }
  .msg .role { font-size: 12px; color: var(--muted); margin-bottom: 2px; }
  .msg.user { align-self: flex-end; background: #eef2ff; }
  .msg.assistant { align-self: flex-start; background: #f3f4f6; }
  .msg.error { align-self: stretch; background: #fef2f2; color: #991b1b; }
  .composer { display: flex; gap: 8px; padding: 10px; border-top: 1px solid var(--line); }
  .composer textarea { flex: 1; resize: vertical; min-height: 44px; }
  button { font: inherit; border: 1px solid var(--line); background: #fff; border-radius: 6px; padding: 6px 14px; cursor: pointer; }
  button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
  button:disabled { opacity: .45; cursor: default; }
  #status { font-size: 12px; color: var(--muted); min-height: 1em; }
  @media (max-width: 720px) { main { grid-template-columns: 1fr; height: auto; } section.chat { min-height: 70vh; } }
</style>
</head>
<body data-state="idle">
<header><h1 id="title">tsft</h1><span class="model" id="model"></span></header>
<main>
  <aside>
    <label><span id="l-system"></span><textarea id="system" rows="4"></textarea></label>
    <label><span id="l-temperature"></span><input id="temperature" type="number" min="0" max="2" step="0.05"></label>
    <label><span id="l-max-tokens"></span><input id="max-tokens" type="number" min="1" step="1"></label>
    <button id="clear"></button>
    <div id="status" role="status" aria-live="polite"></div>
  </aside>
  <section class="chat">
    <div id="messages" aria-live="polite"></div>
    <div class="composer">
      <textarea id="input" rows="2"></textarea>
      <button id="send" class="primary"></button>
      <button id="stop" disabled></button>
    </div>
  </section>
</main>
<script>
"use strict";
var CONFIG = /*TSFT_CONFIG*/null || {};
var TEXT = {
  en: { title: "tsft chat", system: "System prompt", temperature: "Temperature (0 = greedy)", maxTokens: "Max new tokens",
        clear: "Clear history", send: "Send", stop: "Stop", placeholder: "Type a question, Enter to send (Shift+Enter: new line)",
        user: "You", assistant: "Assistant", stopped: "stopped", generating: "generating…", error: "Error",
        done: "done", tokens: "tokens" },
  zh: { title: "tsft 对话", system: "系统提示词", temperature: "温度（0 = 贪心）", maxTokens: "最大生成 token 数",
        clear: "清空历史", send: "发送", stop: "停止", placeholder: "输入问题，回车发送（Shift+回车换行）",
        user: "你", assistant: "助手", stopped: "已停止", generating: "生成中…", error: "错误",
        done: "完成", tokens: "个 token" }
};
var T = TEXT[CONFIG.lang] || TEXT.en;
document.documentElement.lang = CONFIG.lang === "zh" ? "zh-CN" : "en";
function $(id) { return document.getElementById(id); }
function setText(id, text) { $(id).textContent = text; }
setText("title", T.title);
setText("model", CONFIG.model || "");
setText("l-system", T.system);
setText("l-temperature", T.temperature);
setText("l-max-tokens", T.maxTokens);
setText("clear", T.clear);
setText("send", T.send);
setText("stop", T.stop);
$("input").placeholder = T.placeholder;
$("system").value = CONFIG.system || "";
$("temperature").value = CONFIG.temperature == null ? 0 : CONFIG.temperature;
$("max-tokens").value = CONFIG.max_tokens == null ? 512 : CONFIG.max_tokens;

var chatHistory = [];
var controller = null;

function addMessage(role, text) {
  var box = document.createElement("div");
  box.className = "msg " + role;
  var who = document.createElement("div");
  who.className = "role";
  who.textContent = role === "user" ? T.user : role === "assistant" ? T.assistant : T.error;
  var content = document.createElement("div");
  content.className = "content";
  content.textContent = text;              // text only: model output is never parsed as HTML
  box.appendChild(who);
  box.appendChild(content);
  $("messages").appendChild(box);
  $("messages").scrollTop = $("messages").scrollHeight;
  return content;
}

function setBusy(busy) {
  document.body.setAttribute("data-state", busy ? "generating" : "idle");
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("clear").disabled = busy;
}

function buildMessages() {
  // always sent: an empty box means no system prompt (not the template's default one)
  return [{ role: "system", content: $("system").value }].concat(chatHistory);
}

async function send() {
  var text = $("input").value;
  if (!text.trim() || controller) return;
  $("input").value = "";
  addMessage("user", text);
  chatHistory.push({ role: "user", content: text });
  var out = addMessage("assistant", "");
  var answer = "";
  var temperature = parseFloat($("temperature").value);
  var maxTokens = parseInt($("max-tokens").value, 10);
  var body = { model: CONFIG.model, messages: buildMessages(), stream: true };
  if (isFinite(temperature)) body.temperature = temperature;
  if (isFinite(maxTokens)) body.max_tokens = maxTokens;
  controller = new AbortController();
  setBusy(true);
  setText("status", T.generating);
  var finish = null;
  try {
    var resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal
    });
    if (!resp.ok) {
      var err = await resp.json().catch(function () { return {}; });
      throw new Error((err.error && err.error.message) || ("HTTP " + resp.status));
    }
    var reader = resp.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var r = await reader.read();
      if (r.done) break;
      buffer += decoder.decode(r.value, { stream: true });
      var events = buffer.split("\n\n");
      buffer = events.pop();
      for (var i = 0; i < events.length; i++) {
        var line = events[i].trim();
        if (line.indexOf("data:") !== 0) continue;
        var data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        var chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        var choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          out.textContent = answer;
          $("messages").scrollTop = $("messages").scrollHeight;
        }
        if (choice.finish_reason) finish = { reason: choice.finish_reason, usage: chunk.usage };
      }
    }
    setText("status", T.done + (finish ? " (" + finish.reason + (finish.usage ? ", " + finish.usage.completion_tokens + " " + T.tokens : "") + ")" : ""));
  } catch (e) {
    if (e && e.name === "AbortError") setText("status", T.stopped);
    else { addMessage("error", String(e && e.message || e)); setText("status", ""); }
  } finally {
    chatHistory.push({ role: "assistant", content: answer });
    controller = null;
    setBusy(false);
  }
}

$("send").addEventListener("click", send);
$("stop").addEventListener("click", function () { if (controller) controller.abort(); });
$("clear").addEventListener("click", function () {
  chatHistory = [];
  $("messages").textContent = "";
  setText("status", "");
});
$("input").addEventListener("keydown", function (e) {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
</script>
</body>
</html>
`;

/** The page with its settings filled in (JSON with `<` escaped, so no value can close the script). */
export function renderWebUi(config: { lang: 'zh' | 'en'; model: string; system?: string | null; temperature?: number | null; max_tokens?: number | null }): string {
  const json = JSON.stringify(config).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
  return WEB_UI_HTML.replace('/*TSFT_CONFIG*/null', json);
}
