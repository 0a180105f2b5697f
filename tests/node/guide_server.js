// The backend the guide (user-status-guide.md) describes, as a test fixture:
// an in-memory onlineUsers Map, userOnline / userOffline / getOnlineUsers in,
// userStatusChanged broadcast to everyone and onlineUsersList to the asker.
// It keeps the guide's shortcomings on purpose (one entry per user, no grace
// period, no validation): it is the reference we must interoperate with.
//
// Usage: node guide_server.js [port]   (port 0 = any free port)
// Prints one line "listening <port>" on stdout when ready.
// Test hooks, not in the guide: the "__set_status" event lets a test emit a
// status other than online/offline, as richer backends do.

const { createServer } = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 0);
const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });

const onlineUsers = new Map(); // userId -> { socketId, userType, userName, lastSeen }

io.on("connection", (socket) => {
  socket.on("userOnline", ({ userId, userType, userName } = {}) => {
    const lastSeen = new Date();
    onlineUsers.set(userId, { socketId: socket.id, userType, userName, lastSeen });
    socket.userId = userId;
    io.emit("userStatusChanged", { userId, status: "online", lastSeen });
  });

  socket.on("userOffline", ({ userId } = {}) => {
    const lastSeen = new Date();
    onlineUsers.delete(userId);
    io.emit("userStatusChanged", { userId, status: "offline", lastSeen });
  });

  socket.on("getOnlineUsers", () => {
    const users = [];
    for (const [userId, u] of onlineUsers) {
      users.push({ userId, status: "online", lastSeen: u.lastSeen, userType: u.userType, userName: u.userName });
    }
    socket.emit("onlineUsersList", users);
  });

  socket.on("__set_status", ({ userId, status } = {}) => {
    io.emit("userStatusChanged", { userId, status, lastSeen: new Date() });
  });

  socket.on("disconnect", () => {
    const userId = socket.userId;
    if (userId !== undefined && onlineUsers.has(userId) && onlineUsers.get(userId).socketId === socket.id) {
      const lastSeen = new Date();
      onlineUsers.delete(userId);
      io.emit("userStatusChanged", { userId, status: "offline", lastSeen });
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
