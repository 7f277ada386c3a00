// dsched dashboard: the Record panel of /profile-server.  It starts and stops a
// recording of the scheduler's core events (POST api/record) and shows its state
// (GET api/record).  The file is written on the scheduler's machine, in its record
// directory: the panel names it, for `dsched replay FILE` there.
"use strict";

(function () {
  const d = window.dsched;
  const info = document.getElementById("record-info");
  const startButton = document.getElementById("record-start");
  const stopButton = document.getElementById("record-stop");
  const maxMb = document.getElementById("record-max-mb");
  const POLL_MS = 2000;

  function show(state) {
    startButton.disabled = state.recording;
    stopButton.disabled = !state.recording;
    const size = d.fmtBytes(state.bytes) + ", " + d.fmtNumber(state.batches) + " batches";
    if (state.recording) {
      info.textContent = "recording to " + state.path + " (" + size + ")";
    } else if (state.path) {
      const why = state.stopped ? "; " + state.stopped : "";
      info.textContent = "recorded " + state.path + " (" + size + why + "): replay it with dsched replay " + state.path;
    } else {
      info.textContent = "not recording";
    }
  }

  async function send(action) {
    const body = { action };
    const mb = Number(maxMb.value);
    if (action === "start" && mb > 0) body.max_bytes = Math.round(mb * 1e6);
    startButton.disabled = stopButton.disabled = true;
    try {
      show(await d.postJSON("api/record", body));
    } catch (err) {
      info.textContent = (action === "start" ? "starting" : "stopping") + " failed: " + err.message;
      poller.refresh();
    }
  }

  startButton.addEventListener("click", () => send("start"));
  stopButton.addEventListener("click", () => send("stop"));
  const poller = d.poll(async () => show(await d.getJSON("api/record")), POLL_MS);
})();
