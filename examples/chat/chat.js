// A small chat on the HTTP bus: messages arrive as Server-Sent Events from
// GET /msgbus/chat and are sent with POST /msgbus/chat (text/plain).
//
// The name is sent as the user of HTTP Basic credentials, which the bus
// records as the sender, with the password when one is typed (a server
// started with --secret wants it on every request; the browser asks for it
// when the page loads, and the password field gives it for publishing). The page subscribes with `?format=json`, so each
// event's data is {"channel", "type", "from", "body"} and every message can
// be labelled with its sender.
"use strict";

(function () {
  const CHANNEL = "chat";
  const busPath = "/msgbus/" + encodeURIComponent(CHANNEL);
  const NAME_KEY = "switchboard-chat-name";

  const list = document.getElementById("messages");
  const statusLine = document.getElementById("status");
  const form = document.getElementById("send-form");
  const nameInput = document.getElementById("name");
  const passwordInput = document.getElementById("password");
  const textInput = document.getElementById("text");
  const sendButton = document.getElementById("send");
  const sendError = document.getElementById("send-error");

  // Bodies this page sent and has not yet seen come back, oldest first.
  const pending = [];

  function setStatus(text, state) {
    statusLine.textContent = text;
    statusLine.dataset.state = state;
    document.body.dataset.ready = state === "open" ? "true" : "false";
  }

  function cleanName(raw) {
    // A colon would end the user part of Basic credentials.
    return raw.replace(/[:\u0000-\u001f\u007f]/g, "").trim();
  }

  function basicAuth(user, password) {
    const bytes = new TextEncoder().encode(user + ":" + password);
    let binary = "";
    for (const b of bytes) {
      binary += String.fromCharCode(b);
    }
    return "Basic " + btoa(binary);
  }

  function addMessage(body, sender, mine) {
    const item = document.createElement("li");
    if (mine) {
      item.classList.add("mine");
    }
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString();
    item.append(time);
    if (sender) {
      const who = document.createElement("span");
      who.className = "sender";
      who.textContent = sender;
      item.append(who, " ");
    }
    const text = document.createElement("span");
    text.className = "body";
    text.textContent = body;
    item.append(text);

    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(item);
    if (atBottom) {
      list.scrollTop = list.scrollHeight;
    }
  }

  function receive(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    const body = message.body;
    const index = pending.findIndex((p) => p.body === body);
    if (index >= 0) {
      const [own] = pending.splice(index, 1);
      addMessage(body, message.from || own.sender || "you", true);
    } else {
      addMessage(body, message.from, false);
    }
  }

  function connect() {
    setStatus("Connecting…", "connecting");
    const source = new EventSource(busPath + "?format=json");
    source.onopen = () => setStatus("Connected to channel " + CHANNEL, "open");
    source.onmessage = receive;
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an error status): retry after a pause.
        setStatus("Disconnected, retrying…", "closed");
        setTimeout(connect, 3000);
      } else {
        setStatus("Reconnecting…", "connecting");
      }
    };
  }

  async function send(event) {
    event.preventDefault();
    const body = textInput.value;
    if (body.trim() === "") {
      textInput.focus();
      return;
    }
    const sender = cleanName(nameInput.value);
    const password = passwordInput.value;
    const headers = { "Content-Type": "text/plain" };
    if (sender || password) {
      headers.Authorization = basicAuth(sender, password);
    }
    sendError.textContent = "";
    sendButton.disabled = true;
    const entry = { body, sender };
    pending.push(entry);
    try {
      // From the origin: a page opened as http://user:password@host/ would
      // otherwise make fetch refuse a URL that carries credentials.
      const url = location.origin + busPath;
      // With credentials of our own, the browser's (those it asked for
      // when the page loaded) must neither replace them nor prompt again.
      const credentials = headers.Authorization ? "omit" : "same-origin";
      const response = await fetch(url, { method: "POST", headers, body, credentials });
      if (response.status === 401) {
        throw new Error(
          password
            ? "the server refused the password"
            : "the server needs a password to publish (the Password field)"
        );
      }
      if (!response.ok) {
        throw new Error("the server answered " + response.status);
      }
      textInput.value = "";
    } catch (err) {
      const i = pending.indexOf(entry);
      if (i >= 0) {
        pending.splice(i, 1);
      }
      sendError.textContent = "Not sent: " + err.message;
    } finally {
      sendButton.disabled = false;
      textInput.focus();
    }
  }

  nameInput.value = localStorage.getItem(NAME_KEY) || "";
  nameInput.addEventListener("change", () => {
    localStorage.setItem(NAME_KEY, cleanName(nameInput.value));
  });
  form.addEventListener("submit", send);
  connect();
})();
