// Fallback Firestore emulator for the tests: `node run.mjs <port>`; prints "ready" once listening.
import { FirestoreServer } from "@firestore-emulator/server";

const port = Number(process.argv[2] || 8080);
const server = new FirestoreServer();
await server.start(port);
console.log(`ready on 127.0.0.1:${port}`);
process.on("SIGTERM", async () => {
  await server.stop?.();
  process.exit(0);
});
