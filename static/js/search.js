/*
 * Search by photo: choose / drop / paste / take a photo, crop it to the garment, search.
 *
 * Progressive enhancement of the plain multipart form on the home page (which works without
 * this script). The crop is done here, on a canvas, and only the crop is uploaded: the server
 * gets exactly the pixels the shopper framed (EXIF rotation already applied by the browser),
 * a phone photo of several MB becomes a ~100 kB upload, and the API stays one simple contract
 * (an image in) for the web page and the apps alike. A file the browser cannot decode is sent
 * as it is, so the server's own message says what is wrong with it.
 *
 * Results come back as an HTML fragment rendered (and escaped) by Django: this script never
 * builds markup from data.
 */
(function () {
  "use strict";

  var form = document.getElementById("search-form");
  if (!form || !window.fetch || !window.FormData) return;

  var MAX_SIDE = 1024; // longest side of the uploaded crop; the CNN sees 224 x 224
  // Longest side kept of a big photo once decoded here (48-200 MP camera modes): the crop
  // is drawn on this copy, and the upload is at most MAX_SIDE anyway.
  var KEEP_SIDE = 2048;
  var maxBytes = Number(form.dataset.maxBytes) || Infinity;
  var maxPixels = Number(form.dataset.maxPixels) || Infinity;

  var dropzone = document.getElementById("dropzone");
  var fileInputs = form.querySelectorAll('input[type="file"][name="image"]');
  var fileName = document.getElementById("file-name");
  var cropPanel = document.getElementById("crop-panel");
  var stage = document.getElementById("crop-stage");
  var preview = document.getElementById("preview");
  var box = document.getElementById("crop-box");
  var cropInfo = document.getElementById("crop-info");
  var cropReset = document.getElementById("crop-reset");
  var message = document.getElementById("photo-message");
  var results = document.getElementById("results");
  var busy = document.getElementById("busy");
  var status = document.getElementById("search-status"); // what screen readers announce
  var button = document.getElementById("search-button");

  var photo = null; // {file, decoded, width, height, url}
  var crop = null; // {x, y, w, h} in the photo's pixels
  var searched = false;
  var pending = null; // AbortController of the search in flight

  Array.prototype.forEach.call(document.querySelectorAll(".js-only"), function (el) {
    el.hidden = false;
  });
  // The file inputs hide behind the "Choose a photo" buttons (without this script the
  // browser's own input stays visible and shows the chosen file's name).
  form.classList.add("js-enhanced");

  // ------------------------------------------------------------------ messages

  function say(text) {
    message.textContent = text;
    message.hidden = !text;
  }

  function megabytes(bytes) {
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  // ------------------------------------------------------------------ loading a photo

  /** Forget the last search: a new photo's search starts from nothing (no old results, no
   * old error, no old "more / not like this" marks, which the results region carries). */
  function clearResults() {
    if (pending) pending.abort();
    results.innerHTML = "";
    status.textContent = "";
    searched = false;
  }

  function load(file) {
    say("");
    if (!file) return;
    clearResults();
    if (photo && photo.url) URL.revokeObjectURL(photo.url);
    photo = null;
    crop = null;
    cropPanel.hidden = true;
    fileName.textContent = file.name ? "Photo: " + file.name : "Photo from the clipboard";
    var url = URL.createObjectURL(file);
    var probe = new Image();
    probe.onload = function () {
      var width = probe.naturalWidth;
      var height = probe.naturalHeight;
      if (Math.max(width, height) > KEEP_SIDE || width * height > maxPixels) {
        // A camera photo of 48-200 MP: keep a smaller copy (the server's pixel limit is for
        // what is uploaded, and the upload is at most MAX_SIDE).
        shrink(probe, file, width, height).then(function (small) {
          URL.revokeObjectURL(url);
          show(small.file, small.width, small.height, URL.createObjectURL(small.file), file.name);
        }, function () {
          URL.revokeObjectURL(url);
          say("This photo is too large for this browser to read: " + width + " × " + height +
              " pixels. Try a smaller copy of it.");
        });
        return;
      }
      show(file, width, height, url, file.name);
    };
    probe.onerror = function () {
      // Not decodable here (not an image, corrupt, or a format this browser lacks): let the
      // server, which decides, say what is wrong with it.
      URL.revokeObjectURL(url);
      if (file.size > maxBytes) {
        say("image too large: " + megabytes(file.size) + ", the limit is " + megabytes(maxBytes) + ".");
        return;
      }
      photo = { file: file, decoded: false };
      search();
    };
    probe.src = url;
  }

  function show(file, width, height, url, name) {
    photo = { file: file, decoded: true, width: width, height: height, url: url };
    preview.onload = function () {
      cropPanel.hidden = false;
      sizePreview();
      setCrop(null);
      // On a phone the photo loads below the pickers: bring it, and the Search button under
      // it, into view.
      if (window.matchMedia && window.matchMedia("(max-width: 719px)").matches) {
        cropPanel.scrollIntoView({ block: "start" });
      }
    };
    preview.src = url;
    preview.alt = "Your photo" + (name ? ", " + name : "");
  }

  /** A JPEG copy of a decoded photo, longest side KEEP_SIDE. */
  function shrink(image, file, width, height) {
    var scale = Math.min(1, KEEP_SIDE / Math.max(width, height));
    var w = Math.max(1, Math.round(width * scale));
    var h = Math.max(1, Math.round(height * scale));
    var decoded = window.createImageBitmap
      ? createImageBitmap(file, { resizeWidth: w, resizeHeight: h, resizeQuality: "high" })
          .catch(function () { return image; })
      : Promise.resolve(image);
    return decoded.then(function (source) {
      var canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      var context = canvas.getContext("2d");
      context.fillStyle = "#fff";
      context.fillRect(0, 0, w, h);
      context.imageSmoothingQuality = "high";
      context.drawImage(source, 0, 0, w, h);
      if (source.close) source.close();
      return new Promise(function (resolve, reject) {
        canvas.toBlob(function (blob) {
          if (blob) resolve({ file: blob, width: w, height: h });
          else reject(new Error("could not encode the photo"));
        }, "image/jpeg", 0.92);
      });
    });
  }

  Array.prototype.forEach.call(fileInputs, function (input) {
    input.addEventListener("change", function () {
      if (input.files && input.files[0]) load(input.files[0]);
      input.value = ""; // choosing the same file again still fires "change"
    });
  });

  // Drag and drop onto the drop zone (and, not to lose a near miss, the whole page).
  ["dragenter", "dragover"].forEach(function (type) {
    document.addEventListener(type, function (event) {
      if (!hasFiles(event)) return;
      event.preventDefault();
      dropzone.classList.add("is-dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    document.addEventListener(type, function (event) {
      if (type === "dragleave" && event.relatedTarget) return;
      dropzone.classList.remove("is-dragging");
    });
  });
  document.addEventListener("drop", function (event) {
    if (!hasFiles(event)) return;
    event.preventDefault();
    load(event.dataTransfer.files[0]);
  });

  function hasFiles(event) {
    var types = event.dataTransfer && event.dataTransfer.types;
    return !!types && Array.prototype.indexOf.call(types, "Files") !== -1;
  }

  // Paste an image (a screenshot, a picture copied from another site).
  document.addEventListener("paste", function (event) {
    var items = (event.clipboardData && event.clipboardData.items) || [];
    for (var i = 0; i < items.length; i++) {
      if (items[i].kind === "file" && /^image\//.test(items[i].type)) {
        event.preventDefault();
        load(items[i].getAsFile());
        return;
      }
    }
  });

  // ------------------------------------------------------------------ cropping

  function full() {
    return { x: 0, y: 0, w: photo.width, h: photo.height };
  }

  function isFull(c) {
    return c.x === 0 && c.y === 0 && c.w === photo.width && c.h === photo.height;
  }

  function clampCrop(c) {
    var w = Math.max(1, Math.min(Math.round(c.w), photo.width));
    var h = Math.max(1, Math.min(Math.round(c.h), photo.height));
    var x = Math.max(0, Math.min(Math.round(c.x), photo.width - w));
    var y = Math.max(0, Math.min(Math.round(c.y), photo.height - h));
    return { x: x, y: y, w: w, h: h };
  }

  function setCrop(c) {
    crop = c ? clampCrop(c) : full();
    draw();
    cropInfo.textContent = isFull(crop)
      ? "Searching the whole photo (" + photo.width + " × " + photo.height + " px)."
      : "Searching the framed part: " + crop.w + " × " + crop.h + " px of " +
        photo.width + " × " + photo.height + ".";
    cropReset.hidden = isFull(crop);
  }

  /** Show the photo as large as fits: small catalogue-style photos are scaled up so that a
   * frame can be drawn on them, big ones down to the panel and about half the screen. */
  function sizePreview() {
    var room = cropPanel.clientWidth || 300;
    var tallest = Math.max(200, window.innerHeight * 0.55);
    var scale = Math.max(1, Math.min(260, tallest) / photo.height);
    scale = Math.min(scale, tallest / photo.height, room / photo.width);
    preview.style.width = Math.max(1, Math.round(photo.width * scale)) + "px";
  }

  function draw() {
    if (!photo || !crop) return;
    var scale = preview.clientWidth / photo.width;
    box.style.left = crop.x * scale + "px";
    box.style.top = crop.y * scale + "px";
    box.style.width = crop.w * scale + "px";
    box.style.height = crop.h * scale + "px";
    box.classList.toggle("is-full", isFull(crop));
  }

  window.addEventListener("resize", function () {
    if (!photo || !photo.decoded) return;
    sizePreview();
    draw();
  });

  function pointAt(event) {
    var rect = preview.getBoundingClientRect();
    var scale = photo.width / rect.width;
    return {
      x: Math.max(0, Math.min(photo.width, (event.clientX - rect.left) * scale)),
      y: Math.max(0, Math.min(photo.height, (event.clientY - rect.top) * scale)),
    };
  }

  var drag = null;

  stage.addEventListener("pointerdown", function (event) {
    if (!photo || !photo.decoded || event.button > 0) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    var p = pointAt(event);
    var inside = !isFull(crop) && p.x >= crop.x && p.x <= crop.x + crop.w &&
      p.y >= crop.y && p.y <= crop.y + crop.h;
    drag = inside
      ? { mode: "move", dx: p.x - crop.x, dy: p.y - crop.y }
      : { mode: "draw", x0: p.x, y0: p.y };
    drag.before = JSON.stringify(crop);
    box.focus({ preventScroll: true });
  });

  stage.addEventListener("pointermove", function (event) {
    if (!drag) return;
    var p = pointAt(event);
    if (drag.mode === "move") {
      setCrop({ x: p.x - drag.dx, y: p.y - drag.dy, w: crop.w, h: crop.h });
    } else {
      setCrop({
        x: Math.min(drag.x0, p.x),
        y: Math.min(drag.y0, p.y),
        w: Math.abs(p.x - drag.x0),
        h: Math.abs(p.y - drag.y0),
      });
    }
  });

  function endDrag() {
    if (!drag) return;
    var wasDraw = drag.mode === "draw";
    var before = drag.before;
    drag = null;
    // A click, or a frame too small to hold a garment, means "the whole photo".
    var tiny = crop.w < Math.max(8, photo.width * 0.04) || crop.h < Math.max(8, photo.height * 0.04);
    if (wasDraw && tiny) setCrop(null);
    if (searched && JSON.stringify(crop) !== before) search();
  }

  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);

  box.addEventListener("keydown", function (event) {
    if (!photo || !photo.decoded) return;
    var step = Math.max(1, Math.round(Math.max(photo.width, photo.height) * 0.02));
    var c = { x: crop.x, y: crop.y, w: crop.w, h: crop.h };
    var moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (event.key === "Escape") {
      if (isFull(crop)) return;
      setCrop(null);
    } else if (moves[event.key]) {
      var d = moves[event.key];
      if (isFull(crop) && !event.shiftKey) {
        // Start from a centred frame of half the photo, so the arrows have room to move it.
        c = { x: photo.width / 4, y: photo.height / 4, w: photo.width / 2, h: photo.height / 2 };
      } else if (event.shiftKey) {
        c.w += d[0] * step;
        c.h += d[1] * step;
      } else {
        c.x += d[0] * step;
        c.y += d[1] * step;
      }
      setCrop(c);
    } else {
      return;
    }
    event.preventDefault();
  });

  // Keyboard framing searches again once the keys rest, not at every step.
  var again = null;
  box.addEventListener("keyup", function (event) {
    if (!searched || !(event.key === "Escape" || /^Arrow/.test(event.key))) return;
    clearTimeout(again);
    again = setTimeout(search, 400);
  });

  cropReset.addEventListener("click", function () {
    setCrop(null);
    if (searched) search();
  });

  // ------------------------------------------------------------------ searching

  /** The image to upload: the original file when it can go as it is, else the crop. */
  function prepare() {
    if (!photo.decoded) return Promise.resolve({ blob: photo.file, name: photo.file.name || "photo" });
    var scale = Math.min(1, MAX_SIDE / Math.max(crop.w, crop.h));
    var asIs = isFull(crop) && scale === 1 && photo.file.size <= maxBytes &&
      /^image\/(jpeg|png|webp)$/.test(photo.file.type);
    if (asIs) return Promise.resolve({ blob: photo.file, name: photo.file.name || "photo" });
    var canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(crop.w * scale));
    canvas.height = Math.max(1, Math.round(crop.h * scale));
    var context = canvas.getContext("2d");
    context.fillStyle = "#fff"; // transparent areas become white, as on the server
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.imageSmoothingQuality = "high";
    context.drawImage(preview, crop.x, crop.y, crop.w, crop.h, 0, 0, canvas.width, canvas.height);
    return new Promise(function (resolve, reject) {
      canvas.toBlob(function (blob) {
        if (blob) resolve({ blob: blob, name: "crop.jpg" });
        else reject(new Error("could not encode the crop"));
      }, "image/jpeg", 0.92);
    });
  }

  function setBusy(on) {
    if (on) status.textContent = "Searching…";
    form.setAttribute("aria-busy", on ? "true" : "false");
    form.classList.toggle("is-busy", on);
    results.setAttribute("aria-busy", on ? "true" : "false");
    busy.hidden = !on;
    button.disabled = on;
  }

  /** The form's fields, with the button that sent it (a "more / not like this" button, a
   * category chip, "start over"): a chip sets the category control itself, so that the
   * searches after it stay in that category. */
  function formData(submitter) {
    if (submitter && submitter.name === "category") {
      // The select itself (the chips share its name: form.elements.category lists them all).
      form.querySelector('select[name="category"]').value = submitter.value;
      submitter = null;
    }
    var data = new FormData(form);
    if (submitter && submitter.name) data.append(submitter.name, submitter.value);
    return data;
  }

  /** The filter menus count with the filters of the search just made (the results carry
   * the counts as JSON): "Women (1,204)"; a value the other filters leave empty says (0). */
  function updateMenuCounts() {
    var source = document.getElementById("menu-counts");
    if (!source) return;
    var counts = JSON.parse(source.textContent);
    Object.keys(counts).forEach(function (name) {
      var select = form.querySelector('select[data-filter="' + name + '"]');
      if (!select) return;
      Array.prototype.forEach.call(select.options, function (option) {
        if (!option.value) return; // "Any ..."
        var label = option.getAttribute("data-label") || option.value;
        option.textContent = counts[name][option.value] || label + " (0)";
      });
    });
  }

  function search(options) {
    var carried = form.querySelector('input[name="photo"]'); // the photo of the last results
    if (!photo && !carried) {
      say("Choose a photo first: click “Choose a photo”, drop one here, or paste one.");
      return;
    }
    say("");
    if (pending) pending.abort();
    var controller = window.AbortController ? new AbortController() : null;
    pending = controller;
    setBusy(true);
    var data = formData(options && options.submitter);
    (photo ? prepare() : Promise.resolve(null))
      .then(function (image) {
        data.delete("image");
        if (image) {
          data.delete("photo"); // the photo itself goes up, not the small copy shown
          data.append("image", image.blob, image.name);
        }
        return fetch(form.action, {
          method: "POST",
          body: data,
          credentials: "same-origin",
          headers: { "X-Requested-With": "fetch" },
          signal: controller ? controller.signal : undefined,
        });
      })
      .then(function (response) {
        return response.text().then(function (html) {
          if (response.headers.get("X-Search-Fragment") !== "1") {
            throw new Error("the server answered HTTP " + response.status);
          }
          results.innerHTML = html; // rendered and escaped by Django
          searched = true;
          updateMenuCounts();
          // Errors in the fragment are role="alert" and announce themselves.
          var heading = document.getElementById("results-heading");
          status.textContent = heading ? heading.textContent.trim() + " found." : "";
          if (options && options.focus) {
            var heading = document.getElementById("results-heading");
            if (heading) heading.focus({ preventScroll: false });
          }
        });
      })
      .catch(function (error) {
        if (error && error.name === "AbortError") return;
        results.innerHTML = "";
        status.textContent = "";
        say("The search failed (" + (error && error.message ? error.message : "network error") +
            "). Check your connection and try again.");
      })
      .then(function () {
        if (pending === controller) {
          pending = null;
          setBusy(false);
        }
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    search({ focus: true, submitter: event.submitter });
  });

  // Changing how many results, a filter or "colour matters" searches again at once.
  var RESEARCH = ["top", "category", "colour_matters", "gender", "colour", "season", "usage"];
  form.addEventListener("change", function (event) {
    var name = event.target && event.target.name;
    if (RESEARCH.indexOf(name) >= 0 && searched) search();
  });
})();
