// The guide's frontend, reduced to its socket calls: Node's socket.io-client v4 plays the
// flows of user-status-guide.md (plus the extensions) against a server, and prints what it
// observed as one JSON object on stdout. The Python test decides what is right.
//
// Usage: node guide_client.js <server url>     exit 0 when every step got its answer,
//                                              1 (with the step on stderr) otherwise.

const { io } = require("socket.io-client");

const url = process.argv[2];
const STEP_TIMEOUT = 8000;
const sockets = [];
const observed = { steps: [] };

function connect(options = {}) {
  // default transports, as a browser: long-polling first, then the upgrade to websocket
  const socket = io(url, { forceNew: true, reconnection: false, ...options });
  socket.changes = [];
  socket.errors = [];
  socket.on("userStatusChanged", (change) => socket.changes.push(change));
  socket.on("presenceError", (error) => socket.errors.push(error));
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
}

function until(what, predicate) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      const value = predicate();
      if (value) {
        clearInterval(timer);
        resolve(value);
      } else if (Date.now() - started > STEP_TIMEOUT) {
        clearInterval(timer);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, 5);
  });
}

const change = (socket, userId, status) => () =>
  socket.changes.find((c) => c.userId === userId && c.status === status);

function onlineUsers(socket) {
  return new Promise((resolve) => {
    socket.once("onlineUsersList", resolve);
    socket.emit("getOnlineUsers");
  });
}

async function main() {
  const watcher = await connect();
  const alice = await connect();

  // 1. userOnline -> userStatusChanged online, broadcast to everyone (the sender too)
  alice.emit("userOnline", { userId: 123, userType: "agent", userName: "John Doe" });
  const online = await until("alice online", change(watcher, 123, "online"));
  await until("alice hears herself", change(alice, 123, "online"));
  observed.online = online;
  observed.onlineUserIdType = typeof online.userId;
  observed.lastSeenRoundTrips = new Date(online.lastSeen).toJSON() === online.lastSeen;

  // 2. getOnlineUsers -> onlineUsersList to the asker
  observed.list = await onlineUsers(watcher);

  // 3. a second tab and a repeated userOnline: no new broadcast
  const aliceTab2 = await connect();
  aliceTab2.emit("userOnline", { userId: 123, userType: "agent", userName: "John Doe" });
  alice.emit("userOnline", { userId: 123, userType: "agent", userName: "John Doe" });
  await onlineUsers(aliceTab2); // barrier: both handled
  await onlineUsers(watcher);
  observed.changesAfterRepeat = watcher.changes.filter((c) => c.userId === 123).length;

  // 4. extensions: heartbeat (with an acknowledgement), status, team
  observed.heartbeatAck = await new Promise((resolve, reject) =>
    alice.timeout(STEP_TIMEOUT).emit("userHeartbeat", { userId: 123 }, (err, ack) =>
      err ? reject(new Error("no acknowledgement for userHeartbeat")) : resolve(ack)
    )
  );
  alice.emit("userStatus", { userId: 123, status: "away" });
  observed.away = await until("alice away", change(watcher, 123, "away"));

  // 5. bad input and someone else's id -> presenceError, nothing changes
  alice.emit("userOnline", null);
  alice.emit("userOffline", { userId: 999 });
  await until("two presenceErrors", () => alice.errors.length >= 2 && alice.errors);
  observed.errors = alice.errors;

  // 6. userOffline from one tab: the other still holds the user; the last one takes it away
  alice.emit("userOffline", { userId: 123 });
  await onlineUsers(alice);
  observed.listAfterFirstOffline = await onlineUsers(watcher);
  aliceTab2.emit("userOffline", { userId: 123 });
  observed.offline = await until("alice offline", change(watcher, 123, "offline"));

  // 7. a string id that disconnects without userOffline: offline after the grace period
  const bob = await connect();
  bob.emit("userOnline", { userId: "bob", userType: "admin", userName: "Bob", team: "Ops" });
  await until("bob online", change(watcher, "bob", "online"));
  observed.listWithTeam = await onlineUsers(watcher);
  bob.disconnect();
  observed.bobOffline = await until("bob offline", change(watcher, "bob", "offline"));
  observed.finalList = await onlineUsers(watcher);
  observed.watcherChanges = watcher.changes;
}

main()
  .then(() => {
    process.stdout.write(JSON.stringify(observed) + "\n");
    sockets.forEach((s) => s.disconnect());
    process.exit(0);
  })
  .catch((error) => {
    process.stderr.write(`guide_client: ${error.message}\n`);
    process.stdout.write(JSON.stringify(observed) + "\n");
    process.exit(1);
  });
