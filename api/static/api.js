// Requests to the API from the page: the bearer token (when the server has one, kept for this
// browser tab only) and errors as one readable line.

export const TOKEN_KEY = "latentwatch.token";

export class AuthNeeded extends Error {}

/** A 404 answer (its message is the API's detail). */
export class NotFound extends Error {}

let onAuthNeeded = () => {};

/** Called with a message when the API answers 401 (the page asks for the token). */
export function whenAuthNeeded(callback) {
  onAuthNeeded = callback;
}

export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    onAuthNeeded(token ? "That token was refused." : "This server needs an API token.");
    throw new AuthNeeded();
  }
  if (response.status === 404) throw new NotFound(await errorText(response));
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

export async function getJson(path) {
  return (await api(path)).json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ");
    }
  } catch {
    // not JSON: fall through
  }
  return `HTTP ${response.status}`;
}
