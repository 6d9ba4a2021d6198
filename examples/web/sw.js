// The example's service worker: shows each push as a notification and focuses the inbox when
// it is clicked.
self.addEventListener("push", (event) => {
  const data = event.data ? event.data.json() : {};
  event.waitUntil(
    self.registration.showNotification(data.title ?? "New message", {
      body: data.body ?? data.msg ?? "",
      data: { mid: data.mid },
    }),
  );
});
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: "window" }).then((tabs) =>
      tabs.length ? tabs[0].focus() : self.clients.openWindow("./"),
    ),
  );
});
