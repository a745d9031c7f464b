// Preloaded into Portkey's gateway by bench/targets.py (`node --import`): its start script calls
// listen(port) with no address, which binds every interface. The benchmark sends traffic only to 127.0.0.1,
// so a listen() given a port and no address is made to bind 127.0.0.1 instead. Nothing else is changed.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args.length === 1 || args[1] === undefined || typeof args[1] === "function")) {
    if (args[1] === undefined) {
      args[1] = "127.0.0.1";
    } else {
      args.splice(1, 0, "127.0.0.1");
    }
  }
  return listen.apply(this, args);
};
