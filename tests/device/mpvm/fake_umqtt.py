# A stand-in umqtt.simple for the MicroPython VM (it has no sockets): records what the device does.


class MQTTException(Exception):
    pass


class _Sock:
    def read(self, n):
        return None

    def write(self, buf, n=None):
        return len(buf)

    def setblocking(self, flag):
        pass

    def settimeout(self, t):
        pass

    def close(self):
        pass


class MQTTClient:
    events = []  # noqa: RUF012 - what every client did, in order
    inbox = []  # noqa: RUF012 - (topic, msg) the next check_msg() delivers
    fail_publish = 0  # publishes still to fail with OSError

    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,
        ssl_params={},
    ):
        self.sock = None
        self.cb = None
        self.user = user

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        MQTTClient.events.append(["will", topic.decode(), msg.decode(), retain, qos])

    def connect(self, clean_session=True, timeout=None):
        self.sock = _Sock()
        MQTTClient.events.append(["connect", self.user, timeout])

    def publish(self, topic, msg, retain=False, qos=0):
        if MQTTClient.fail_publish:
            MQTTClient.fail_publish -= 1
            raise OSError(-1)
        MQTTClient.events.append(["publish", topic.decode(), bytes(msg).decode(), retain, qos])

    def subscribe(self, topic, qos=0):
        MQTTClient.events.append(["subscribe", topic.decode(), qos])

    def check_msg(self):
        if MQTTClient.inbox:
            topic, msg = MQTTClient.inbox.pop(0)
            self.sock.read(0)
            self.cb(topic, msg)

    def ping(self):
        pass

    def disconnect(self):
        MQTTClient.events.append(["disconnect"])
