// Web Push for msgxc: fetch the exchange's VAPID key, register the app's service worker,
// subscribe with the browser's push service, and enlist the subscription as the user's device.

import type { MsgxcClient } from "./index.js";

/** What `PushSubscription.toJSON()` gives, the body `POST /enlist` takes for Web Push. */
export interface PushSubscriptionLike {
  endpoint: string;
  expirationTime?: number | null;
  keys: { p256dh: string; auth: string };
}

export interface WebPushOptions {
  /** The service worker script that shows the pushes (served by the app). */
  serviceWorker: string;
  /** Its scope, if not the script's folder. */
  scope?: string;
}

/** Where `enableWebPush` failed: fetching the exchange's key, registering the service worker,
 * the notification permission, subscribing with the browser's push service, or enlisting. */
export type WebPushStage = "unsupported" | "vapid" | "service-worker" | "permission" | "subscribe" | "enlist";

export class WebPushError extends Error {
  constructor(
    readonly stage: WebPushStage,
    message: string,
    readonly cause?: unknown,
  ) {
    super(message);
    this.name = "WebPushError";
  }
}

/** Runs one stage, naming it in the error. */
async function stage<T>(name: WebPushStage, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof WebPushError) throw e;
    throw new WebPushError(name, `${name}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

/** The VAPID public key (base64url) as the `applicationServerKey` bytes. */
export function urlBase64ToUint8Array(key: string): Uint8Array<ArrayBuffer> {
  const padded = key.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (key.length % 4)) % 4);
  const raw = atob(padded);
  const out = new Uint8Array(new ArrayBuffer(raw.length));
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** Enlists a subscription (from `PushSubscription.toJSON()`) as the caller's device. */
export async function enlistWebPush(
  client: MsgxcClient,
  subscription: PushSubscriptionLike,
): Promise<{ id: string }> {
  return client.request("POST", "/enlist", subscription);
}

/**
 * Asks for permission if needed, registers the service worker, subscribes with the exchange's
 * VAPID key and enlists the subscription. Rejects with a `WebPushError` whose `stage` says what
 * failed: no push support in this browser, Web Push off on the exchange (`vapid`, a 404), the
 * worker, a refused permission, the browser's push service, or the enlistment.
 */
export async function enableWebPush(
  client: MsgxcClient,
  options: WebPushOptions,
): Promise<{ id: string; subscription: PushSubscriptionLike }> {
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
    throw new WebPushError("unsupported", "this browser has no Web Push (service workers and PushManager)");
  }
  const { publicKey } = await stage("vapid", () =>
    client.request<{ publicKey: string }>("GET", "/webpush/vapid-public-key"),
  );
  const registration = await stage("service-worker", async () => {
    const r = await navigator.serviceWorker.register(options.serviceWorker, { scope: options.scope });
    await navigator.serviceWorker.ready;
    return r;
  });
  await stage("permission", async () => {
    if (Notification.permission !== "granted" && (await Notification.requestPermission()) !== "granted") {
      throw new Error("notification permission was not granted");
    }
  });
  const json = await stage("subscribe", async () => {
    const existing = await registration.pushManager.getSubscription();
    const subscription =
      existing ??
      (await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: urlBase64ToUint8Array(publicKey),
      }));
    return subscription.toJSON() as PushSubscriptionLike;
  });
  const device = await stage("enlist", () => enlistWebPush(client, json));
  return { id: device.id, subscription: json };
}
