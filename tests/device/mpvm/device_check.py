# Runs inside real MicroPython: the device module's offline logic and its RAM use, as JSON.
import gc
import json
import os
import time


def used():
    gc.collect()
    gc.collect()
    return gc.mem_alloc()


R = {}
base = used()
import planty_cmds  # noqa: E402, F401 - imported to weigh it
import planty_device  # noqa: E402
from umqtt.simple import MQTTClient  # noqa: E402

R["import_bytes"] = used() - base
base = used()
import planty_boot  # noqa: E402, F401 - imported to weigh it
import planty_ota  # noqa: E402

R["ota_import_bytes"] = used() - base
os.mkdir("/flash")
logs = []
with open("/ca.pem") as f:
    PEM = f.read()
R["der_len"] = len(planty_device.pem_to_der(PEM))


def quiet(line):
    pass


base = used()
lean = planty_device.Device(
    "plant-mp-0", "tok", "gw.local", state_dir="/flash", ring_size=32, log=quiet
)
lean.sensor("temperature")(lambda: 21.5)
lean.sensor("soil_moisture")(lambda: 0.431)
lean.sensor("light")(lambda: 812)
lean.sensor("humidity")(lambda: 0.55)
lean.sensor("battery")(lambda: 3.71)
lean.action("pump.on")(lambda args: None)
lean.action("pump.off")(lambda args: None)
R["device_bytes"] = used() - base
base = used()
for _ in range(40):
    lean.sample()
R["ring_bytes"] = used() - base
R["payload_len"] = len(lean._entry(0))
base = used()
for i in range(16):
    cid = "c-01JD%020d" % i
    lean.cmds.handle(json.dumps({"id": cid, "action": "read"}), None)
R["dedup_bytes"] = used() - base
R["free_after"] = gc.mem_free()
os.remove("/flash/planty_state.json")
os.remove("/flash/planty_ids.json")

dev = planty_device.Device(
    "plant-mp-1",
    "tok",
    "gw.local",
    ca_pem=None,
    state_dir="/flash",
    ring_size=32,
    backoff_ms=(10, 20),
    poll_ms=1,
    log=logs.append,
)
pump = {"level": 0, "on": 0}


@dev.sensor("temperature")
def temperature():
    return 21.5


@dev.sensor("soil_moisture")
def soil():
    return 0.431


@dev.sensor("light")
def light():
    return 812


@dev.sensor("broken")
def broken():
    raise OSError(5)


@dev.action("pump.on")
def pump_on(args):
    pump["level"] = 1
    pump["on"] += 1


@dev.action("pump.off")
def pump_off(args):
    pump["level"] = 0


R["readings"] = dev.read()

for _ in range(40):
    dev.sample()
R["backlog"] = dev.backlog()
R["dropped"] = dev.dropped
R["first_kept"] = json.loads(bytes(dev._entry(0)).decode())

R["status"] = json.loads(dev._status())


def ack(cmd):
    out = dev.cmds.handle(json.dumps(cmd), dev.now_ms())
    return None if out is None else json.loads(out)


R["ping"] = ack({"id": "c-1", "action": "ping"})
R["read"] = ack({"id": "c-2", "action": "read"})
R["config"] = ack({"id": "c-3", "action": "config", "args": {"interval_s": 30}})
R["on"] = ack({"id": "c-4", "action": "pump.on", "args": {"seconds": 0.05}})
R["again"] = ack({"id": "c-4", "action": "pump.on", "args": {"seconds": 0.05}})
R["level_on"] = pump["level"]
time.sleep_ms(80)
dev.cmds.tick(time.ticks_ms())
R["level_later"] = pump["level"]
R["on_calls"] = pump["on"]
R["expired"] = ack({"id": "c-5", "action": "pump.on", "exp": 1})
R["unknown"] = ack({"id": "c-6", "action": "fan.on"})
R["no_id"] = ack({"action": "ping"})
R["bad_json"] = dev.cmds.handle(b"{nope", None)
# The connection path against the recording client: will, subscribe, status, flush in order.
dev2 = planty_device.Device(
    "plant-mp-2",
    "tok",
    "gw.local",
    state_dir="/flash2" if not os.mkdir("/flash2") else "",
    backoff_ms=(10, 20),
    log=logs.append,
)
for i in range(3):
    dev2.sample({"light": i})
MQTTClient.fail_publish = 2  # subscribe works, then status publish fails: no connection
R["first_connect"] = dev2.connect()
MQTTClient.fail_publish = 0
dev2._next_try = time.ticks_ms()
dev2.step()
MQTTClient.inbox.append((dev2.t_cmd, b'{"id": "c-9", "action": "ping"}'))
dev2.step()
R["events"] = MQTTClient.events
R["backlog2"] = dev2.backlog()
R["run_once"] = dev2.run_once(listen_ms=5)

# A clean shutdown: the retained goodbye (acked: QoS 1), then DISCONNECT; the will never fires.
MQTTClient.events = []
dev2.connect()
MQTTClient.events = []
R["goodbye_said"] = dev2.shutdown()
R["goodbye"] = MQTTClient.events
R["goodbye_connected"] = dev2.connected()

# A reboot: boot count, the remembered interval and dedup survive; a saved backlog is renumbered.
dev._save_backlog()
again = planty_device.Device("plant-mp-1", "tok", "gw.local", state_dir="/flash", log=logs.append)
R["boot2"] = again.boot
R["interval2"] = again.interval_s
R["restored"] = [json.loads(bytes(again._entry(i)).decode())["seq"] for i in range(again.backlog())]
R["dup_after_reboot"] = json.loads(
    again.cmds.handle(json.dumps({"id": "c-6", "action": "x"}), None)
)

# An update through the recording client: what one chunk in hand costs the device code.
import hashlib  # noqa: E402
import struct  # noqa: E402

os.mkdir("/flash3")
dev3 = planty_device.Device("plant-mp-3", "tok", "gw.local", state_dir="/flash3", log=logs.append)
resets = []
ota = planty_ota.Updater(dev3, reset=lambda: resets.append(1))
MQTTClient.events = []
dev3.connect()
blob = bytes(range(256)) * 64  # 16 KB
files = [{"name": "plant_app.py", "size": len(blob), "sha256": ""}]
h = hashlib.sha256(blob).digest()
files[0]["sha256"] = "".join("%02x" % x for x in h)
offer = {"op": "offer", "t": 4, "release": "1.3.0", "chunk": 1024, "files": files}
CHUNKS = []
for off in range(0, len(blob), 1024):
    data = blob[off : off + 1024]
    CHUNKS.append(struct.pack("!BIBI8s", 1, 4, 0, off, hashlib.sha256(data).digest()[:8]) + data)
blob = None
gc.collect()
ota.receive(json.dumps(offer).encode())
ota.step(time.ticks_ms())
steps = []
for frame in CHUNKS[:-1]:
    ota.receive(frame)
    frame = None
    before = gc.mem_alloc()
    ota.step(time.ticks_ms())
    steps.append(gc.mem_alloc() - before)
R["ota_chunk_alloc"] = steps
R["ota_acks"] = [e[2] for e in MQTTClient.events if e[0] == "publish" and e[1].endswith("ota_ack")][
    :3
]
ota.receive(CHUNKS[-1])
CHUNKS = None
ota.step(time.ticks_ms())
R["ota_resets"] = len(resets)
R["ota_state"] = planty_boot_state = json.loads(open("/flash3/planty_ota.json").read())["state"]
R["logs"] = logs
print("RESULT " + json.dumps(R))
