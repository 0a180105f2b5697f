// Guide clients (Node's socket.io-client v4) of a presence cluster behind a load balancer.
// Each client plays the same three acts, on its own, with no coordinator:
//   1. announce itself (userOnline), then ask getOnlineUsers until everyone is listed;
//   2. go away (userStatus), then wait until it has heard userStatusChanged "away" of
//      everyone (its own included: the guide's broadcast reaches the sender too);
//   3. leave (userOffline), then wait until it has heard "offline" of everyone.
// A client only moves on once everyone has reached the act before, so every change it
// waits for is made while it is connected. What each observed (its Engine.IO session
// id, the transport at the end, disconnects, errors, the changes heard) is printed as
// one JSON object on stdout; the Python test decides what is right.
//
// Usage: node cluster_client.js <url> <spec JSON> [timeout ms]
//   spec: {"clients": [{"user": "p1", "transports": "default"}, ...],
//          "everyone": ["p1", "w1", ...]}     (a client's own "everyone" overrides it)
//   transports: "default" (a browser's: long-polling, then the upgrade to websocket),
//               "websocket" (websocket only) or "polling" (long-polling only).
// Exit 0 when every client finished its three acts, 1 otherwise (the reason on stderr).

const { io } = require("socket.io-client");

const url = process.argv[2];
const spec = JSON.parse(process.argv[3]);
const STEP_TIMEOUT = Number(process.argv[4] || 30000);
const TRANSPORTS = {
  default: ["polling", "websocket"],
  websocket: ["websocket"],
  polling: ["polling"],
};

function until(what, predicate, interval = 20) {
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
    }, interval);
  });
}

async function play({ user, transports }, everyone, record) {
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    transports: TRANSPORTS[transports],
  });
  record.socket = socket;
  // the Engine.IO session opens (handshake answered) before its upgrade can finish
  socket.io.once("open", () => {
    const engine = socket.io.engine;
    record.sid = engine.id;
    record.firstTransport = engine.transport.name;
    engine.on("upgrade", (transport) => record.upgrades.push(transport.name));
  });
  let listed = [];
  socket.on("onlineUsersList", (list) => (listed = list.map((entry) => entry.userId)));
  socket.on("userStatusChanged", (c) => record.changes.push([c.userId, c.status]));
  socket.on("presenceError", (e) => record.errors.push(e));
  socket.on("disconnect", (reason) => record.disconnects.push(reason));
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (e) => reject(new Error(`${user}: connect_error ${e.message}`)));
  });
  const heard = (status) => () =>
    everyone.every((u) => record.changes.some(([id, s]) => id === u && s === status));

  // act 1: everyone listed as online (asked again every 200 ms until they are)
  socket.emit("userOnline", { userId: user, userType: "agent", userName: `User ${user}` });
  await until(
    `${user}: everyone in getOnlineUsers`,
    () => {
      if (everyone.every((u) => listed.includes(u))) return true;
      socket.emit("getOnlineUsers");
      return false;
    },
    200
  );

  // act 2: everyone away
  socket.emit("userStatus", { userId: user, status: "away" });
  await until(`${user}: away of everyone`, heard("away"));

  // act 3: everyone offline
  socket.emit("userOffline", { userId: user });
  await until(`${user}: offline of everyone`, heard("offline"));
  record.lastTransport = socket.io.engine.transport.name;
  record.connectedAtEnd = socket.connected;
}

let records = [];

async function main() {
  records = spec.clients.map((c) => ({
    user: c.user,
    transports: c.transports,
    changes: [],
    errors: [],
    disconnects: [],
    upgrades: [],
  }));
  await Promise.all(
    spec.clients.map((client, i) => play(client, client.everyone || spec.everyone, records[i]))
  );
  return records;
}

function report(records) {
  return JSON.stringify(records.map(({ socket, ...rest }) => rest)) + "\n";
}

main()
  .then((done) => {
    process.stdout.write(report(done));
    done.forEach((r) => r.socket.disconnect());
    process.exit(0);
  })
  .catch((error) => {
    process.stderr.write(`cluster_client: ${error.message}\n`);
    process.stdout.write(report(records));
    process.exit(1);
  });
