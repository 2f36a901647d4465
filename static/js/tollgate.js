// Polled parts of a page (hx-trigger="every ...", marked data-poll-while-visible) ask nothing while the tab is
// hidden. A file, not htmx's [condition] filter: that is evaluated as code, which the Content-Security-Policy forbids.
document.addEventListener("htmx:beforeRequest", function (event) {
  var elt = event.detail && event.detail.elt;
  if (elt && elt.hasAttribute("data-poll-while-visible") && document.visibilityState !== "visible") {
    event.preventDefault();
  }
});

// A form that asks on every change of its fields except those matching data-ignore-change-from (they make a request
// of their own): htmx's change[...] filter would say so, but it too is evaluated as code.
document.addEventListener("htmx:confirm", function (event) {
  var elt = event.detail && event.detail.elt;
  var changed = event.detail && event.detail.triggeringEvent;
  var skip = elt && elt.getAttribute && elt.getAttribute("data-ignore-change-from");
  if (skip && changed && changed.type === "change" && changed.target && changed.target.matches &&
      changed.target.matches(skip)) {
    event.preventDefault();  // no request: htmx issues it only when a confirm handler asks it to
  }
});
