// The few behaviours htmx does not cover: upload with progress, photo previews, the category picker,
// seeking the player to a keyframe, and the review queue's keyboard shortcuts.
(function () {
  "use strict";

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // Drag-and-drop upload: the form posts with XMLHttpRequest so the progress bar can follow the bytes.
  function setUpDropzone(form) {
    const zone = form.querySelector(".dropzone");
    const input = form.querySelector("input[type=file]");
    const progress = form.querySelector("progress");
    const message = form.querySelector("[data-upload-message]");
    const chosen = form.querySelector("[data-chosen]");
    let file = null;

    function choose(f) {
      file = f;
      chosen.textContent = f ? f.name + " (" + Math.ceil(f.size / 1024) + " KB)" : "";
    }
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
    });
    input.addEventListener("change", () => choose(input.files[0] || null));

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!file) {
        message.textContent = "Choose or drop a video first.";
        return;
      }
      const data = new FormData(form);
      data.set("file", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable) progress.value = ev.loaded / ev.total;
      });
      xhr.addEventListener("load", () => {
        if (xhr.status === 202) {
          const list = document.querySelector(form.dataset.target);
          list.insertAdjacentHTML("afterbegin", xhr.responseText);
          htmx.process(list.firstElementChild);
          message.textContent = "Uploaded. Processing starts in the background.";
          form.reset();
          choose(null);
        } else {
          message.textContent = xhr.responseText || ("Upload failed (" + xhr.status + ")");
        }
        progress.hidden = true;
      });
      xhr.addEventListener("error", () => {
        message.textContent = "Upload failed: the server could not be reached.";
        progress.hidden = true;
      });
      progress.hidden = false;
      progress.value = 0;
      message.textContent = "Uploading…";
      xhr.send(data);
    });
  }

  // Photo previews before a product form is sent.
  function setUpPreviews(input) {
    const target = document.querySelector(input.dataset.previews);
    input.addEventListener("change", () => {
      target.replaceChildren(...Array.from(input.files).map((f) => {
        const img = document.createElement("img");
        img.src = URL.createObjectURL(f);
        img.alt = f.name;
        return img;
      }));
    });
  }

  document.addEventListener("click", (e) => {
    // Category picker: a suggestion fills the hidden id and the visible text.
    const option = e.target.closest("[data-category-id]");
    if (option) {
      e.preventDefault();
      const picker = option.closest(".picker");
      picker.querySelector("input[type=hidden]").value = option.dataset.categoryId;
      picker.querySelector("input[type=search]").value = picker.dataset.chosen = option.dataset.categoryPath;
      picker.querySelector("ul").replaceChildren();
      return;
    }
    // A keyframe moment seeks the page's video player there.
    const moment = e.target.closest("[data-seek]");
    if (moment) {
      const player = document.querySelector(moment.dataset.player || "video");
      if (player) {
        player.currentTime = parseFloat(moment.dataset.seek);
        player.scrollIntoView({ block: "nearest", behavior: "smooth" });
      }
    }
  });

  // Review queue: a approve, r reject, s skip, u undo. Keys and clicks go through one queue, so a key
  // pressed while the previous decision is being saved applies to the match shown next.
  const reviewKeys = [];
  let reviewBusy = false;

  async function runReviewKeys() {
    if (reviewBusy) return;
    reviewBusy = true;
    try {
      while (reviewKeys.length) {
        const card = document.querySelector("#review-card");
        const button = card && card.querySelector('[data-key="' + reviewKeys.shift() + '"]');
        if (!button || button.disabled) continue;
        card.setAttribute("aria-busy", "true");
        const response = await fetch(button.dataset.post, {
          method: "POST", headers: { "X-CSRFToken": csrfToken() },
          body: new URLSearchParams(button.dataset.action ? { action: button.dataset.action } : {}),
        });
        const text = await response.text();
        if (response.ok) {
          card.outerHTML = text;
        } else {
          card.removeAttribute("aria-busy");
          card.querySelector("[data-review-message]").textContent = text || ("Not saved (" + response.status + ")");
          reviewKeys.length = 0;
        }
      }
    } finally {
      reviewBusy = false;
    }
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, select, textarea")) return;
    const key = e.key.toLowerCase();
    if (!document.querySelector("#review-card") || !"arsu".includes(key) || key.length !== 1) return;
    e.preventDefault();
    reviewKeys.push(key);
    runReviewKeys();
  });

  document.addEventListener("click", (e) => {
    const button = e.target.closest("#review-card [data-key]");
    if (!button) return;
    reviewKeys.push(button.dataset.key);
    runReviewKeys();
  });

  // A suggestion list that arrives after the user picked a category is not shown.
  document.addEventListener("htmx:beforeSwap", (e) => {
    const picker = e.detail.target.closest(".picker");
    if (picker && picker.querySelector("input[type=search]").value === picker.dataset.chosen) {
      e.detail.shouldSwap = false;
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("form[data-upload]").forEach(setUpDropzone);
    document.querySelectorAll("input[data-previews]").forEach(setUpPreviews);
  });
})();
