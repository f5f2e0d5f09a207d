"""Planty plant sensor on an ESP32 board: soil moisture, temperature, light, a pump relay.

Copy this file, boot.py, planty_device.py, planty_cmds.py, planty_ota.py,
planty_boot.py and secrets.json to the board (docs/firmware.md). Every pin and
calibration value is in CONFIG below.
"""

import json
import time

import machine
import network
import planty_device
import planty_ota

CONFIG = {
    "fw": "1.0.0",
    "soil_pin": 34,  # capacitive soil sensor AOUT; ADC1 pins only (ADC2 stops with Wi-Fi on)
    "soil_dry": 50000,  # read_u16() with the probe in dry air: calibrate yours
    "soil_wet": 21000,  # read_u16() with the probe in a glass of water
    "ldr_pin": 35,  # 3V3 - LDR - pin - fixed resistor - GND
    "ldr_fixed_ohm": 10000,
    "ldr_ohm_at_10lux": 15000,  # GL5528: 10-20 kOhm at 10 lux
    "ldr_gamma": 0.7,
    "onewire_pin": 4,  # DS18B20 data, 4.7 kOhm pull-up to 3V3; None: chip sensor only
    "pump_pin": 26,  # relay IN
    "relay_active_low": True,  # most relay boards switch on when IN is pulled low
    "max_pump_s": 120,  # the pump never runs longer than this, whatever the command says
    "led_pin": 2,  # on-board LED; None for none
    "interval_s": 60,  # telemetry period (a `config` command changes it and is remembered)
    "deep_sleep": False,  # True: wake, send, listen for commands, sleep interval_s (battery)
    "listen_ms": 3000,  # deep-sleep mode: how long to wait for commands after sending
    "ntp_host": "pool.ntp.org",  # a LAN NTP server works too; without a clock ts is left out
    "watchdog_s": 120,  # reset the board if the loop hangs this long
    "wifi_timeout_s": 20,
    "ota": True,  # take updates over the air (docs/firmware.md "Updates"); not in deep sleep
}

_led = None


def blink(times, on_ms=60, off_ms=120):
    """LED code, see docs/firmware.md: 1 sent, 2 command, 3 online, 5 refused, long = no broker."""
    if _led is None:
        return
    for _ in range(times):
        _led.value(1)
        time.sleep_ms(on_ms)
        _led.value(0)
        time.sleep_ms(off_ms)


def on_event(name):
    if name == "sent":
        blink(1, 20, 0)
    elif name == "cmd":
        blink(2)
    elif name == "connected":
        blink(3)
    elif name == "refused":
        blink(5, 40, 60)
    elif name in ("unreachable", "lost", "wifi_down"):
        blink(1, 600, 0)


def join_wifi(wlan, ssid, password, timeout_s):
    """Join the network; True when up. The LED stays lit while joining."""
    wlan.active(True)
    if wlan.isconnected():
        return True
    print("planty: joining wifi %s" % ssid)
    if _led is not None:
        _led.value(1)
    try:
        wlan.connect(ssid, password)
    except OSError as e:
        print("planty: wifi connect failed: %s" % e)
    start = time.ticks_ms()
    while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), start) < timeout_s * 1000:
        time.sleep_ms(200)
    if _led is not None:
        _led.value(0)
    if wlan.isconnected():
        print("planty: wifi up, address %s" % wlan.ifconfig()[0])
        return True
    print(
        "planty: wifi %s not reachable after %d s; readings are kept meanwhile" % (ssid, timeout_s)
    )
    return False


def set_clock(host):
    """Set the RTC from NTP: needed for `ts`, for command deadlines and for TLS date checks."""
    try:
        import ntptime

        ntptime.host = host
        ntptime.settime()
        print("planty: clock set from %s" % host)
    except Exception as e:  # no NTP: readings go without ts, the broker stamps them
        print("planty: clock not set (%s): readings go without ts" % e)


def soil_sensor(cfg):
    adc = machine.ADC(machine.Pin(cfg["soil_pin"]))
    adc.atten(machine.ADC.ATTN_11DB)
    dry = cfg["soil_dry"]
    span = dry - cfg["soil_wet"]

    def soil_moisture():
        raw = 0
        for _ in range(8):
            raw += adc.read_u16()
        value = (dry - raw / 8) / span
        return round(min(1.0, max(0.0, value)), 3)

    return soil_moisture


def light_sensor(cfg):
    adc = machine.ADC(machine.Pin(cfg["ldr_pin"]))
    adc.atten(machine.ADC.ATTN_11DB)

    def light():
        raw = adc.read_u16()
        if raw < 16:
            return 0
        r_ldr = cfg["ldr_fixed_ohm"] * (65535 / raw - 1)
        if r_ldr <= 0:
            return 100000
        return int(10 * (cfg["ldr_ohm_at_10lux"] / r_ldr) ** (1 / cfg["ldr_gamma"]))

    return light


def temperature_sensor(cfg):
    """DS18B20 on the 1-Wire pin as `temperature`; else the chip's own as `chip_temperature`."""
    if cfg["onewire_pin"] is not None:
        import ds18x20
        import onewire

        ds = ds18x20.DS18X20(onewire.OneWire(machine.Pin(cfg["onewire_pin"])))
        roms = ds.scan()
        if roms:

            def temperature():
                ds.convert_temp()
                time.sleep_ms(750)
                return round(ds.read_temp(roms[0]), 2)

            return "temperature", temperature
        print("planty: no DS18B20 on pin %d; reporting the chip temperature" % cfg["onewire_pin"])
    import esp32

    if hasattr(esp32, "mcu_temperature"):
        return "chip_temperature", esp32.mcu_temperature
    return "chip_temperature", lambda: round((esp32.raw_temperature() - 32) / 1.8, 1)


def add_pump(dev, cfg):
    """The pump relay: pump.on needs seconds (at most max_pump_s), so it always stops by itself."""
    on_level = 0 if cfg["relay_active_low"] else 1
    relay = machine.Pin(cfg["pump_pin"], machine.Pin.OUT, value=1 - on_level)

    @dev.action("pump.on")
    def pump_on(args):
        secs = args.get("seconds")
        if secs is None or secs > cfg["max_pump_s"]:
            raise ValueError("pump.on needs seconds, at most %d" % cfg["max_pump_s"])
        relay.value(on_level)

    @dev.action("pump.off")
    def pump_off(args):
        relay.value(1 - on_level)

    return relay


def build(secrets, cfg, wlan=None):
    """The Device with this board's sensors and pump; `wlan` tells it when Wi-Fi is down."""
    link_up = None
    rssi = None
    if wlan is not None:
        wifi = secrets["wifi"]
        last = [time.ticks_ms()]

        def link_up():
            if wlan.isconnected():
                return True
            if time.ticks_diff(time.ticks_ms(), last[0]) > 15000:  # ask again, not too often
                last[0] = time.ticks_ms()
                try:
                    wlan.connect(wifi["ssid"], wifi.get("password", ""))
                except OSError:
                    pass
            return False

        def rssi():
            return wlan.status("rssi")

    dev = planty_device.Device.from_secrets(
        secrets,
        fw=cfg["fw"],
        interval_s=cfg["interval_s"],
        link_up=link_up,
        rssi=rssi,
        on_event=on_event,
    )
    dev.sensor("soil_moisture")(soil_sensor(cfg))
    name, fn = temperature_sensor(cfg)
    dev.sensor(name)(fn)
    dev.sensor("light")(light_sensor(cfg))
    add_pump(dev, cfg)
    if cfg.get("ota") and not cfg["deep_sleep"]:
        planty_ota.Updater(dev)
    return dev


def main():
    global _led
    cfg = CONFIG
    if cfg["led_pin"] is not None:
        _led = machine.Pin(cfg["led_pin"], machine.Pin.OUT, value=0)
    try:
        secrets = planty_device.load_secrets("secrets.json")
    except ValueError as e:
        print("planty: %s" % e)
        while True:  # nothing to do without provisioning: say so on the LED
            blink(10, 40, 60)
            time.sleep_ms(2000)
    wlan = network.WLAN(network.STA_IF)
    wifi = secrets["wifi"]
    up = join_wifi(wlan, wifi["ssid"], wifi.get("password", ""), cfg["wifi_timeout_s"])
    if up and machine.reset_cause() != machine.DEEPSLEEP_RESET:
        set_clock(cfg["ntp_host"])  # the RTC keeps time through deep sleep
    dev = build(secrets, cfg, wlan)
    print(
        "planty: %s boot %d, %s"
        % (
            dev.device_id,
            dev.boot,
            json.dumps({"sensors": [n for n, _ in dev.sensors], "interval_s": dev.interval_s}),
        )
    )
    if cfg["deep_sleep"]:
        dev.run_once(listen_ms=cfg["listen_ms"])
        dev.deep_sleep(int(dev.interval_s * 1000))
    wdt = machine.WDT(timeout=cfg["watchdog_s"] * 1000)
    clock_at = time.ticks_ms()
    try:
        while True:
            try:
                dev.step()
            except Exception as e:  # a bug in one pass must not stop the board: say it, go on
                print("planty: loop error %s %s; continuing" % (e.__class__.__name__, e))
                time.sleep_ms(1000)
            wdt.feed()
            if time.ticks_diff(time.ticks_ms(), clock_at) > 6 * 3600 * 1000 and wlan.isconnected():
                clock_at = time.ticks_ms()
                set_clock(cfg["ntp_host"])  # the RTC drifts a few seconds a day
            time.sleep_ms(dev.poll_ms)
    except KeyboardInterrupt:  # stopped on purpose (Ctrl-C, mpremote): a clean shutdown
        dev.shutdown()
        raise


if __name__ == "__main__":
    main()
