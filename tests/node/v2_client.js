// A version-2 client written with Node's socket.io-client v4, as a JavaScript developer
// would (docs/server.md): it subscribes to a team, collects presenceDiff frames, asks
// getUsersStatus and sends one bad subscribe; guide clients (version 1) make the changes.
// Prints what it observed as one JSON object on stdout; the Python test decides.
//
// Usage: node v2_client.js <server url>     exit 0 when every step got its answer.

const { io } = require("socket.io-client");

const url = process.argv[2];
const STEP_TIMEOUT = 8000;
const sockets = [];
const observed = { diffs: [], guideEventsAtV2: 0 };

function connect(auth) {
  const socket = io(url, { forceNew: true, reconnection: false, auth });
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

const seen = (userId, status) => () =>
  observed.diffs.some((d) => d.changes.some((c) => c.userId === userId && c.status === status));

async function main() {
  const watcher = await connect({ protocol: 2 });
  watcher.on("presenceDiff", (diff) => observed.diffs.push(diff));
  watcher.on("userStatusChanged", () => observed.guideEventsAtV2++);
  observed.ack = await watcher.timeout(STEP_TIMEOUT).emitWithAck("subscribe", { teams: ["Ops"] });

  const seven = await connect({});
  const eight = await connect({});
  await seven.timeout(STEP_TIMEOUT).emitWithAck("userOnline", { userId: 7, userName: "Sev", team: "Ops" });
  await eight.timeout(STEP_TIMEOUT).emitWithAck("userOnline", { userId: 8, userName: "Ate", team: "Sales" });
  await seven.timeout(STEP_TIMEOUT).emitWithAck("userStatus", { userId: 7, status: "away" });
  await seven.timeout(STEP_TIMEOUT).emitWithAck("userOffline", { userId: 7 });
  await until("7 offline in a diff", seen(7, "offline"));

  observed.status = await watcher
    .timeout(STEP_TIMEOUT)
    .emitWithAck("getUsersStatus", { userIds: [7, 8, "nobody"] });

  const error = new Promise((resolve) => watcher.once("presenceError", resolve));
  observed.badAck = await watcher.timeout(STEP_TIMEOUT).emitWithAck("subscribe", { teams: "Ops" });
  observed.error = await error;
}

main()
  .then(() => {
    process.stdout.write(JSON.stringify(observed) + "\n");
    sockets.forEach((s) => s.disconnect());
    process.exit(0);
  })
  .catch((error) => {
    process.stderr.write(`v2_client: ${error.message}\n`);
    process.stdout.write(JSON.stringify(observed) + "\n");
    process.exit(1);
  });
