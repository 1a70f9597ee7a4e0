// The blip3 chat page: keeps the conversation in `messages` (OpenAI format), sends it to
// /v1/chat/completions with stream: true and appends the streamed tokens as they arrive.
"use strict";
const log = document.getElementById("log");
const form = document.getElementById("form");
const text = document.getElementById("text");
const file = document.getElementById("file");
const preview = document.getElementById("preview");
const key = document.getElementById("key");
let messages = [];
let pendingImage = null;

function add(role, content, image) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    div.appendChild(img);
  }
  const span = document.createElement("span");
  span.textContent = content;
  div.appendChild(span);
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return span;
}

function setImage(blob) {
  const reader = new FileReader();
  reader.onload = () => {
    pendingImage = reader.result;
    preview.src = pendingImage;
    preview.hidden = false;
  };
  reader.readAsDataURL(blob);
}

file.addEventListener("change", () => { if (file.files[0]) setImage(file.files[0]); });
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) {
    if (item.type.startsWith("image/")) setImage(item.getAsFile());
  }
});
document.getElementById("reset").addEventListener("click", () => {
  messages = [];
  log.textContent = "";
});

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = text.value.trim();
  if (!question && !pendingImage) return;
  const parts = [];
  if (pendingImage) parts.push({ type: "image_url", image_url: { url: pendingImage } });
  parts.push({ type: "text", text: question });
  add("user", question, pendingImage);
  messages.push({ role: "user", content: parts });
  text.value = "";
  pendingImage = null;
  preview.hidden = true;
  file.value = "";
  const out = add("assistant", "");
  const headers = { "Content-Type": "application/json" };
  if (key.value) headers["Authorization"] = "Bearer " + key.value;
  let reply = "";
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers,
      body: JSON.stringify({ messages, stream: true, temperature: 0, max_tokens: 256 }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || res.statusText);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            reply += delta.content;
            out.textContent = reply;
            log.scrollTop = log.scrollHeight;
          }
        }
      }
    }
    messages.push({ role: "assistant", content: reply });
    out.parentElement.dataset.done = "true";
  } catch (err) {
    out.parentElement.className = "msg error";
    out.textContent = "error: " + err.message;
    messages.pop();
  }
});
