// Passkeys for flask-security-lite's pages: sign in, and add a passkey. No build
// step and no library; served by the security blueprint as a script of this site.
(() => {
  const bytes = (text) => Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  const text = (buffer) =>
    btoa(String.fromCharCode(...new Uint8Array(buffer))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const withIds = (list) => (list || []).map((item) => ({ ...item, id: bytes(item.id) }));

  // The browser's own parsers where it has them; else the same by hand.
  const creationOptions = (json) =>
    PublicKeyCredential.parseCreationOptionsFromJSON
      ? PublicKeyCredential.parseCreationOptionsFromJSON(json)
      : { ...json, challenge: bytes(json.challenge), user: { ...json.user, id: bytes(json.user.id) },
          excludeCredentials: withIds(json.excludeCredentials) };
  const requestOptions = (json) =>
    PublicKeyCredential.parseRequestOptionsFromJSON
      ? PublicKeyCredential.parseRequestOptionsFromJSON(json)
      : { ...json, challenge: bytes(json.challenge), allowCredentials: withIds(json.allowCredentials) };

  // PublicKeyCredential.toJSON(), for browsers that lack it.
  const asJSON = (credential) => {
    if (credential.toJSON) return credential.toJSON();
    const answer = credential.response, response = { clientDataJSON: text(answer.clientDataJSON) };
    if (answer.attestationObject) {
      response.attestationObject = text(answer.attestationObject);
      response.transports = answer.getTransports ? answer.getTransports() : [];
    } else {
      response.authenticatorData = text(answer.authenticatorData);
      response.signature = text(answer.signature);
      if (answer.userHandle) response.userHandle = text(answer.userHandle);
    }
    return { id: credential.id, rawId: text(credential.rawId), type: credential.type, response,
             authenticatorAttachment: credential.authenticatorAttachment,
             clientExtensionResults: credential.getClientExtensionResults() };
  };

  // A JSON post with the CSRF token; the envelope's response, or an Error with its message.
  const post = async (url, csrfToken, body) => {
    const reply = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken },
      body: JSON.stringify(body || {}),
    });
    const envelope = await reply.json().catch(() => ({}));
    const answer = envelope.response || {};
    if (reply.ok) return answer;
    const errors = Object.values(answer.errors || {}).flat();
    throw new Error(errors[0] || answer.error || "Something went wrong: please try again.");
  };

  const report = (region, error) => {
    if (error.name === "AbortError") return;
    region.textContent = error.name === "NotAllowedError" ? "The passkey request was cancelled or timed out." : error.message;
  };

  const signIn = (box) => {
    const region = document.getElementById("passkey-error"), data = box.dataset;
    let pending = new AbortController();
    const attempt = async (mediation) => {
      region.textContent = "";
      pending.abort();
      pending = new AbortController();
      const { options } = await post(data.optionsUrl, data.csrfToken);
      const credential = await navigator.credentials.get({ publicKey: requestOptions(options), mediation, signal: pending.signal });
      const remember = Boolean(document.querySelector("input[name=remember]:checked"));
      const answer = await post(data.loginUrl, data.csrfToken, { credential: asJSON(credential), remember, next: data.next });
      window.location.assign(answer.next);
    };
    box.querySelector("button").addEventListener("click", () => attempt("optional").catch((error) => report(region, error)));
    // Conditional mediation: the browser offers passkeys in the address field.
    if (PublicKeyCredential.isConditionalMediationAvailable) {
      PublicKeyCredential.isConditionalMediationAvailable().then((available) => {
        if (available) attempt("conditional").catch((error) => report(region, error));
      });
    }
  };

  const add = (form) => {
    const region = document.getElementById("passkey-error"), data = form.dataset;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      region.textContent = "";
      try {
        const password = form.elements.password ? form.elements.password.value : undefined;
        const options = await post(data.optionsUrl, data.csrfToken, { password });
        const credential = await navigator.credentials.create({ publicKey: creationOptions(options.options) });
        const answer = await post(data.registerUrl, data.csrfToken, {
          credential: asJSON(credential), label: form.elements.label.value });
        window.location.assign(answer.next);
      } catch (error) { report(region, error); }
    });
  };

  const box = document.getElementById("passkey-login"), form = document.getElementById("passkey-add");
  if (!window.PublicKeyCredential) document.getElementById("passkey-error").textContent = "This browser cannot use passkeys.";
  else if (box) signIn(box);
  else if (form) add(form);
})();
