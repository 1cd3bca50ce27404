// jit-sidecar console: countdowns, live updates (server-sent events), announcements and
// optional desktop notifications. No framework; the pages work without it, minus liveness.
"use strict";
(function () {
  const main = document.getElementById("main");
  const announce = document.getElementById("announce");
  const badge = document.getElementById("pending-count");
  const notifyButton = document.getElementById("notify");

  function duration(s) {
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      const left = Math.max(0, Math.round(Number(el.dataset.expires) - now));
      el.textContent = left > 0 ? duration(left) + " left" : "expired";
      el.classList.toggle("soon", left > 0 && left < 30);
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = duration(Math.max(0, Math.round(now - Number(el.dataset.since))));
    });
  }
  tick();
  setInterval(tick, 1000);

  function say(text) {
    if (announce) announce.textContent = text;
  }

  // Re-render <main> in place, unless the person is working inside it (typing a comment,
  // or focus on one of its controls): then offer the refresh instead of moving their focus.
  let updatesButton = null;
  function busy() {
    const active = document.activeElement;
    return active && active !== main && main.contains(active);
  }
  async function refresh() {
    if (busy()) {
      if (!updatesButton) {
        updatesButton = document.createElement("button");
        updatesButton.type = "button";
        updatesButton.className = "updates";
        updatesButton.textContent = "New updates: show them";
        updatesButton.addEventListener("click", function () {
          updatesButton.remove();
          updatesButton = null;
          render().then(function () { main.focus(); });
        });
        main.parentNode.insertBefore(updatesButton, main);
      }
      return;
    }
    await render();
  }
  async function render() {
    const response = await fetch(location.href, {
      headers: { "X-Partial": "main" },
      credentials: "same-origin",
    });
    if (!response.ok) return;
    // The outcome of the person's last action stays in view across live re-renders.
    const kept = Array.from(main.querySelectorAll("p.notice.ok"));
    main.innerHTML = await response.text();
    const heading = main.querySelector("h1");
    if (heading && !main.querySelector("p.notice.ok")) {
      kept.reverse().forEach(function (el) { heading.after(el); });
    }
    tick();
  }

  function approvalsShown() {
    return Array.from(main.querySelectorAll("article.approval"))
      .map(function (el) { return el.id.replace(/^approval-/, ""); })
      .sort()
      .join(",");
  }

  function desktopNotify(approval) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden) return;
    new Notification("Approval requested", {
      body: approval.action + " on " + approval.resource + " by " + approval.subject,
    });
  }

  if (notifyButton && "Notification" in window && Notification.permission === "default") {
    notifyButton.hidden = false;
    notifyButton.addEventListener("click", function () {
      Notification.requestPermission().then(function () { notifyButton.hidden = true; });
    });
  }

  const kind = main ? main.dataset.refresh : "";
  if (badge !== null && window.EventSource) {
    let live = main.dataset.live || null;
    const source = new EventSource("/events");
    source.addEventListener("update", function (event) {
      const message = JSON.parse(event.data);
      badge.textContent = String(message.pending);
      (message.new || []).forEach(function (a) {
        say("New approval request: " + a.action + " on " + a.resource + " from " + a.subject);
        desktopNotify(a);
      });
      if (kind === "approvals") {
        const pending = message.approvals.map(function (a) { return a.id; }).sort().join(",");
        if (pending !== approvalsShown()) refresh();
      } else if (kind === "live") {
        if (live !== null && message.live !== live) refresh();
        live = message.live;
      }
    });
  }
})();
