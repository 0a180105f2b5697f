// A Socket.IO v4 server that emits the guide's userStatusChanged as fast as it can
// (or at a fixed rate), for bench/bench_listener.py.
//
// Usage: node blaster.js [port]   prints "listening <port>" when ready.
// Clients connecting with ?role=control are not sent the events; they start a run
// with "blast" {count, users, rate} (rate 0 = as fast as possible) and receive
// "blastDone" {count, ms} when the last event has been handed to socket.io.
// Every event toggles a user (even events online, odd offline), so each one is a
// transition; lastSeen is the emit time. getOnlineUsers answers [] (nobody is
// online before a run).

const { createServer } = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 0);
const httpServer = createServer();
const io = new Server(httpServer, { maxHttpBufferSize: 1e7 });

io.on("connection", (socket) => {
  if (socket.handshake.query.role !== "control") socket.join("sink");
  socket.on("getOnlineUsers", () => socket.emit("onlineUsersList", []));
  socket.on("blast", ({ count = 10000, users = 1000, rate = 0, offset = 0 } = {}) => {
    const started = Date.now();
    let sent = 0;
    const emitOne = () => {
      const n = offset + sent;
      const userId = n % users;
      const round = Math.floor(n / users);
      io.to("sink").emit("userStatusChanged", {
        userId,
        status: round % 2 === 0 ? "online" : "offline",
        lastSeen: new Date(),
      });
      sent += 1;
    };
    const finish = () => socket.emit("blastDone", { count: sent, ms: Date.now() - started });
    if (rate <= 0) {
      const burst = () => {
        const end = Math.min(count, sent + 500);
        while (sent < end) emitOne();
        if (sent < count) setImmediate(burst);
        else finish();
      };
      burst();
    } else {
      // keep to the schedule: at each tick emit what is due by now
      const timer = setInterval(() => {
        const due = Math.min(count, Math.floor(((Date.now() - started) * rate) / 1000));
        while (sent < due) emitOne();
        if (sent >= count) {
          clearInterval(timer);
          finish();
        }
      }, 2);
    }
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
