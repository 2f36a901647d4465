// Polled parts of a page (hx-trigger="every ...", marked data-poll-while-visible) ask nothing while the tab is
// hidden. A file, not htmx's [condition] filter: that is evaluated as code, which the Content-Security-Policy forbids.
document.addEventListener("htmx:beforeRequest", function (event) {
  var elt = event.detail && event.detail.elt;
  if (elt && elt.hasAttribute("data-poll-while-visible") && document.visibilityState !== "visible") {
    event.preventDefault();
  }
});
