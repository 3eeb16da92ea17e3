// The chat page: streams answers from POST /api/chat/ and sends feedback, over the JSON API.
(function () {
  "use strict";

  const main = document.getElementById("main");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("message");
  const sendButton = document.getElementById("send");
  const banner = document.getElementById("banner");
  const rateLatest = document.getElementById("rate-latest");
  const sessionsBox = document.getElementById("sessions-box");
  let sessionId = main.dataset.sessionId || null;

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function headers(extra) {
    return Object.assign(
      { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      extra || {}
    );
  }

  function showExpired() {
    banner.hidden = false;
    banner.textContent = "";
    banner.append("Your session has expired. ");
    const link = document.createElement("a");
    link.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname);
    link.textContent = "Sign in again";
    banner.append(link, " to continue; your conversations are kept.");
  }

  function newRequestId() {
    // crypto.randomUUID needs a secure context (HTTPS or localhost); getRandomValues does not.
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "req-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function isAuthProblem(status) {
    return status === 401 || status === 403;
  }

  function addMessage(role, text) {
    const item = document.createElement("li");
    item.className = "msg " + role;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    item.append(bubble);
    list.append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function addFeedbackControls(item, messageId) {
    const template = document.getElementById("feedback-template");
    const controls = template.content.firstElementChild.cloneNode(true);
    controls.dataset.messageId = String(messageId);
    controls.querySelectorAll("[id]").forEach((el) => (el.id = el.id + messageId));
    controls.querySelectorAll("label[for]").forEach((el) => (el.htmlFor = el.htmlFor + messageId));
    controls.querySelectorAll("[aria-describedby]").forEach((el) =>
      el.setAttribute("aria-describedby", el.getAttribute("aria-describedby") + messageId)
    );
    item.append(controls);
    rateLatest.hidden = false;
  }

  function latestVote() {
    const votes = list.querySelectorAll(".feedback .vote[data-value=true]");
    return votes[votes.length - 1] || null;
  }

  function scrollToLatest() {
    list.scrollTop = list.scrollHeight;
  }

  // While an answer streams in, follow it, unless the person scrolled up to read something else.
  function follow(grow) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    grow();
    if (atBottom) scrollToLatest();
  }

  // --- Sending, with a streamed answer --------------------------------------------------------

  async function send(message, requestId, item) {
    sendButton.disabled = true;
    input.disabled = true;
    const bubble = item.querySelector(".bubble");
    bubble.textContent = "";
    item.classList.remove("failed");
    item.classList.add("thinking");
    item.setAttribute("aria-busy", "true");
    const thinking = document.createElement("span");
    thinking.className = "thinking-label";
    thinking.textContent = "Thinking…";
    bubble.append(thinking);
    item.querySelector(".retry-box")?.remove();
    try {
      const response = await fetch("/api/chat/", {
        method: "POST",
        headers: headers({ "X-Request-ID": requestId, Accept: "text/event-stream" }),
        body: JSON.stringify({ message: message, session_id: sessionId, stream: true }),
      });
      if (isAuthProblem(response.status)) {
        showExpired();
        throw new Error("Sign in again to send this message.");
      }
      if (!response.ok) {
        throw new Error(await errorText(response));
      }
      const done = await readEvents(response, bubble);
      finish(item, done);
    } catch (error) {
      fail(item, message, requestId, error.message || "Something went wrong.");
    } finally {
      item.classList.remove("thinking");
      item.removeAttribute("aria-busy");
      sendButton.disabled = false;
      input.disabled = false;
      input.focus();
    }
  }

  async function errorText(response) {
    const text = await response.text();
    const match = text.match(/data: (.*)/);
    try {
      return JSON.parse(match ? match[1] : text).detail || "The request failed.";
    } catch (e) {
      return "The request failed (HTTP " + response.status + ").";
    }
  }

  async function readEvents(response, bubble) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let started = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const kind = (raw.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((raw.match(/^data: (.*)$/m) || [])[1] || "{}");
        if (kind === "start") {
          // The question is stored in this conversation even if the answer fails, so a retry
          // and the next message must go to the same one.
          adoptSession(data.session_id);
        } else if (kind === "token") {
          if (!started) {
            bubble.textContent = "";
            started = true;
          }
          follow(() => bubble.append(document.createTextNode(data.text)));
        } else if (kind === "error") {
          throw new Error(data.detail || "The assistant could not answer.");
        } else if (kind === "done") {
          bubble.textContent = data.response;
          return data;
        }
      }
    }
    throw new Error("The answer was cut off.");
  }

  function finish(item, done) {
    follow(() => addFeedbackControls(item, done.message_id));
    adoptSession(done.session_id);
  }

  function adoptSession(id) {
    if (!sessionId && id) {
      sessionId = id;
      history.replaceState(null, "", "/chat/" + sessionId + "/");
      const entry = document.createElement("li");
      entry.className = "current";
      const link = document.createElement("a");
      link.href = "/chat/" + sessionId + "/";
      link.setAttribute("aria-current", "page");
      link.textContent = input.dataset.firstMessage || "New conversation";
      entry.append(link);
      const sessions = document.getElementById("sessions");
      sessions.querySelector(".empty")?.remove();
      sessions.prepend(entry);
      document.getElementById("title").textContent = link.textContent;
      document.getElementById("rename").hidden = false;
      document.getElementById("delete").hidden = false;
    }
  }

  function fail(item, message, requestId, text) {
    item.classList.add("failed");
    const bubble = item.querySelector(".bubble");
    bubble.textContent = "";
    const box = document.createElement("div");
    box.className = "retry-box";
    box.setAttribute("role", "alert");
    box.append(text + " ");
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "retry";
    retry.textContent = "Retry";
    // Same X-Request-ID: the server answers the same turn, never a second one.
    retry.addEventListener("click", () => send(message, requestId, item));
    box.append(retry);
    item.append(box);
    retry.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = input.value.trim();
    if (!message) return;
    banner.hidden = true;
    if (!sessionId) input.dataset.firstMessage = message.slice(0, 60);
    addMessage("user", message);
    const item = addMessage("assistant", "");
    input.value = "";
    send(message, newRequestId(), item);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // --- Feedback ----------------------------------------------------------------------------------

  // Each message appears next to the button that was clicked (the vote's beside the votes, the
  // saved comment's beside Save feedback), so it is in view where the person is looking.
  function say(status, text, kind) {
    status.textContent = text;
    status.classList.toggle("ok", kind === "ok");
    status.classList.toggle("problem", kind === "problem");
    if (text) status.scrollIntoView({ block: "nearest" });
  }

  async function saveFeedback(controls, status, isCorrect) {
    controls.querySelectorAll(".fb-status").forEach((s) => s !== status && say(s, ""));
    const pressed = controls.querySelector('.vote[aria-pressed="true"]');
    const value = isCorrect !== undefined ? isCorrect : pressed ? pressed.dataset.value === "true" : null;
    if (value === null) {
      say(status, "Choose Good answer or Bad answer first.", "problem");
      return;
    }
    say(status, "Saving…");
    const response = await fetch("/api/messages/" + controls.dataset.messageId + "/feedback/", {
      method: "PUT",
      headers: headers(),
      body: JSON.stringify({
        is_correct: value,
        comment: controls.querySelector(".fb-comment").value,
        expected_response: controls.querySelector(".fb-expected").value,
      }),
    });
    if (isAuthProblem(response.status)) {
      showExpired();
      say(status, "Not saved: sign in again.", "problem");
      return;
    }
    if (!response.ok) {
      say(status, "Not saved: " + (await errorText(response)), "problem");
      return;
    }
    controls.querySelectorAll(".vote").forEach((b) =>
      b.setAttribute("aria-pressed", String(b.dataset.value === String(value)))
    );
    const what = isCorrect === undefined ? "Feedback saved" : (value ? "Good answer" : "Bad answer") + " saved";
    say(status, what + ". Thank you!", "ok");
  }

  list.addEventListener("click", (event) => {
    const controls = event.target.closest(".feedback");
    if (!controls) return;
    const vote = event.target.closest(".vote");
    if (vote) saveFeedback(controls, controls.querySelector(".vote-status"), vote.dataset.value === "true");
    if (event.target.closest(".save-feedback")) saveFeedback(controls, controls.querySelector(".save-status"));
  });

  rateLatest.addEventListener("click", () => {
    const vote = latestVote();
    if (!vote) return;
    vote.scrollIntoView({ block: "nearest" });
    vote.focus();
  });

  // --- Rename and delete ---------------------------------------------------------------------

  document.getElementById("rename").addEventListener("click", async () => {
    const title = prompt("New title for this conversation:", document.getElementById("title").textContent);
    if (title === null) return;
    const response = await fetch("/api/sessions/" + sessionId + "/", {
      method: "PATCH",
      headers: headers(),
      body: JSON.stringify({ title: title }),
    });
    if (isAuthProblem(response.status)) return showExpired();
    if (response.ok) {
      const saved = (await response.json()).title || "Untitled";
      document.getElementById("title").textContent = saved;
      const link = document.querySelector("#sessions .current a");
      if (link) link.textContent = saved;
    }
  });

  document.getElementById("delete").addEventListener("click", async () => {
    if (!confirm("Delete this conversation? This cannot be undone.")) return;
    const response = await fetch("/api/sessions/" + sessionId + "/", {
      method: "DELETE",
      headers: headers(),
    });
    if (isAuthProblem(response.status)) return showExpired();
    if (response.ok) location.href = "/chat/";
  });

  // --- On load ---------------------------------------------------------------------------------

  // On a phone the list of conversations folds away behind its summary; on a desktop it is open.
  const narrow = window.matchMedia("(max-width: 700px)");
  const fold = () => (sessionsBox.open = !narrow.matches);
  fold();
  narrow.addEventListener("change", fold);
  rateLatest.hidden = !latestVote();
  scrollToLatest();
  input.focus();
})();
