// The console's only script: the overview's live panel refreshes from /console/api/samples every 2 s, the
// tenant picker submits on change, and revoke buttons ask first. Pages work without it (but do not refresh).
"use strict";

function refreshLive(panel) {
  fetch(panel.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((response) => {
      if (response.status === 401) {
        window.location.reload(); // the page itself redirects to the login page
        return null;
      }
      return response.ok ? response.json() : null;
    })
    .then((data) => {
      if (data && typeof data.html === "string") {
        panel.innerHTML = data.html; // rendered and escaped on the server
        panel.dataset.refreshed = String(Number(panel.dataset.refreshed || 0) + 1);
      }
    })
    .catch(() => {}); // a missed refresh is retried 2 s later
}

document.addEventListener("DOMContentLoaded", () => {
  const panel = document.getElementById("live");
  if (panel && panel.dataset.src) {
    setInterval(() => refreshLive(panel), 2000);
  }
  for (const select of document.querySelectorAll("select.auto-submit")) {
    select.addEventListener("change", () => select.form.submit());
  }
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm || "Are you sure?")) {
        event.preventDefault();
      }
    });
  }
});
