"""A second process for the tests: connects its own divvy.Client and obeys JSON-line commands on stdin.

Usage: helper.py SOCKET MODE. Prints {"mode", "client_id"} once connected, then one JSON reply per command;
a DivvyError becomes {"error": code, "name": ...}. Blocks are kept by the name the command gives ("b" by default).
Exits 0 at end of input, after closing its client.
"""

import json
import sys

import divvy


def main() -> int:
    socket, mode = sys.argv[1], sys.argv[2]
    client = divvy.Client(socket, name="pytest-helper", mode=mode)
    blocks: dict[str, divvy.Block] = {}
    print(json.dumps({"mode": client.mode, "client_id": client.client_id}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op, name = command["op"], command.get("name", "b")
        try:
            if op == "adopt":
                blocks[name] = client.adopt(command["handle"], command.get("token", 0))
                reply = {"size": blocks[name].size}
            elif op == "alloc":
                blocks[name] = client.alloc(command["size"])
                reply = {"handle": blocks[name].handle}
            elif op == "read":
                view = blocks[name].memoryview()
                reply = {"hex": view[command.get("offset", 0) : command.get("offset", 0) + command["n"]].hex()}
            elif op == "write":
                data = bytes.fromhex(command["hex"])
                offset = command.get("offset", 0)
                blocks[name].memoryview()[offset : offset + len(data)] = data
                reply = {}
            elif op == "numpy_get":
                array = blocks[name].numpy(command["dtype"], command.get("shape"))
                reply = {"values": array.tolist()}
            elif op == "numpy_set":
                array = blocks[name].numpy(command["dtype"], command.get("shape"))
                array[tuple(command["index"])] = command["value"]
                reply = {}
            elif op == "share":
                info = blocks[name].share()
                reply = {"holders": info.holders, "block_size": info.block_size, "token": info.token}
            elif op == "free":
                reply = {"released": blocks.pop(name).free()}
            elif op == "stats":
                reply = vars(client.stats())
            else:
                reply = {"unknown": op}
        except divvy.DivvyError as error:
            reply = {"error": int(error.code), "name": error.name, "message": error.message}
        print(json.dumps(reply), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
