// Review queue keys: c correct, x incorrect, s skip (outside text fields); in the expected-response
// box, Ctrl+Enter (Cmd+Enter) labels the answer incorrect with the text typed there.
(function () {
  "use strict";
  const form = document.getElementById("review-form");
  if (!form) return;
  const buttons = {};
  form.querySelectorAll("button[data-key]").forEach((b) => { buttons[b.dataset.key] = b; });
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
    if (typing) {
      if (target.id === "id_expected_response" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit(buttons.x);
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const button = buttons[event.key.toLowerCase()];
    if (!button) return;
    event.preventDefault();
    form.requestSubmit(button);
  });
  if (buttons.c) buttons.c.focus({ preventScroll: true });
})();
