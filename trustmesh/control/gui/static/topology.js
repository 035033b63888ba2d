// Topology: services as nodes, calls as edges, from GET /api/topology every 2 s (no reloads).
// The layout runs again only when the set of nodes changes, so the graph does not jump around.
"use strict";
(function () {
  const container = document.getElementById("graph");
  if (!container || typeof cytoscape === "undefined") return;
  const cy = cytoscape({
    container: container,
    wheelSensitivity: 0.3,
    style: [
      { selector: "node", style: {
          "label": "data(label)", "text-valign": "center", "text-halign": "center", "color": "#fff",
          "background-color": "#2f5bd3", "width": 78, "height": 78, "font-size": 13, "font-weight": 600,
          "text-wrap": "wrap", "border-width": 3, "border-color": "#dbe4ff" } },
      { selector: "node[denied_in > 0]", style: { "border-color": "#f4a3a3" } },
      { selector: "edge", style: {
          "label": "data(label)", "curve-style": "bezier", "target-arrow-shape": "triangle",
          "width": 3, "line-color": "#1a7f37", "target-arrow-color": "#1a7f37", "font-size": 11,
          "text-wrap": "wrap", "text-background-color": "#fff", "text-background-opacity": 0.9,
          "text-background-padding": 2, "color": "#1d2330" } },
      { selector: "edge[state = 'degraded']", style: { "line-color": "#d97706", "target-arrow-color": "#d97706" } },
      { selector: "edge[state = 'denied']", style: {
          "line-color": "#c62828", "target-arrow-color": "#c62828", "line-style": "dashed",
          "target-arrow-shape": "tee", "color": "#c62828" } },
    ],
  });
  window.trustmeshTopology = cy;

  function edgeLabel(e) {
    const rate = e.rate_rps.toFixed(1) + " rps";
    if (e.state === "denied") return "DENIED · " + rate;
    const label = rate + " · " + Math.round(e.success_rate * 100) + "% ok · p99 " + e.p99_ms.toFixed(1) + " ms";
    return e.denied ? label + "\n" + e.denied + " denied" : label;
  }

  function apply(data) {
    const wanted = new Set();
    let added = false;
    data.nodes.forEach(function (n) {
      const id = "n:" + n.service;
      wanted.add(id);
      const d = { id: id, label: n.service, denied_in: n.denied_in };
      const existing = cy.getElementById(id);
      if (existing.nonempty()) existing.data(d); else { cy.add({ group: "nodes", data: d }); added = true; }
    });
    data.edges.forEach(function (e) {
      const id = "e:" + e.source + "->" + e.destination;
      wanted.add(id);
      const d = { id: id, source: "n:" + e.source, target: "n:" + e.destination, state: e.state, label: edgeLabel(e) };
      const existing = cy.getElementById(id);
      if (existing.nonempty()) existing.data(d); else cy.add({ group: "edges", data: d });
    });
    cy.elements().forEach(function (el) { if (!wanted.has(el.id())) { el.remove(); } });
    if (added) {
      cy.layout({ name: "breadthfirst", directed: true, padding: 40, spacingFactor: 1.3, animate: false }).run();
    }
    container.dataset.nodes = String(cy.nodes().length);
    container.dataset.edges = String(cy.edges().length);
  }

  function refresh() {
    fetch("/api/topology", { headers: { "accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(apply)
      .catch(function (err) { console.warn("topology refresh failed", err); });
  }
  refresh();
  setInterval(refresh, 2000);
})();
