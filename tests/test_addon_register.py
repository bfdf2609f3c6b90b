"""The add-on as an installed extension on the real bpy wheel: register/unregister leave nothing behind, preferences,
the online-access gate, the HTTP client's errors, and the bundled server process (a real `safemotion serve`)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

bpy = pytest.importorskip("bpy")

from addon_support import (  # noqa: E402
    ADDON_MODULE,
    CheckingLayout,
    addon,  # noqa: F401 (fixture)
    clean_scene,  # noqa: F401 (fixture)
    disable_addon,
    enable_addon,
    preferences,
    use_server,
)


def addon_footprint() -> dict[str, object]:
    """Everything the add-on can leave registered in Blender and in this process."""
    lists = {name: getattr(bpy.app.handlers, name) for name in dir(bpy.app.handlers)}
    handlers = {name: sum(getattr(f, "__module__", "").startswith(ADDON_MODULE) for f in functions)
                for name, functions in lists.items() if isinstance(functions, list)}
    bases = (bpy.types.PropertyGroup, bpy.types.AddonPreferences, bpy.types.Operator, bpy.types.Panel,
             bpy.types.UIList, bpy.types.Menu)
    return {
        "types": sorted(n for n in dir(bpy.types) if n.upper().startswith("SAFEMOTION")),
        "classes": sorted(cls.__name__ for base in bases for cls in base.__subclasses__()
                          if cls.__module__.startswith(ADDON_MODULE) and cls.is_registered),
        "operators": sorted(dir(bpy.ops.safemotion)),
        "scene_properties": sorted(p for p in bpy.types.Scene.bl_rna.properties.keys() if p.startswith("safemotion")),
        "handlers": {k: v for k, v in handlers.items() if v},
        "preferences": ADDON_MODULE in bpy.context.preferences.addons,
    }


def test_register_twice_then_unregister_leaves_nothing():
    was_enabled = ADDON_MODULE in bpy.context.preferences.addons
    if was_enabled:
        disable_addon()
    before = addon_footprint()
    assert before["types"] == before["classes"] == before["operators"] == before["scene_properties"] == []
    try:
        for _ in range(2):
            enable_addon()
            module = enable_addon()  # enabling an enabled add-on re-registers it (unregister, then register)
            during = addon_footprint()
            assert {"SAFEMOTION_OT_generate", "SAFEMOTION_PT_generate", "SAFEMOTION_UL_takes"} <= set(during["types"])
            assert {"SafeMotionPreferences", "SafeMotionSettings", "SafeMotionTake", "SafeMotionFlagged",
                    "SAFEMOTION_OT_generate"} <= set(during["classes"])
            assert {"generate", "cancel_generation", "apply_take", "discard_take", "export_safety_report",
                    "server_start", "server_stop", "check_connection"} <= set(during["operators"])
            assert "safemotion" in during["scene_properties"]
            assert bpy.app.handlers.load_pre.count(module.ops_generate.cancel_on_load) == 1
            assert during["preferences"] is True
            assert module.__name__ == ADDON_MODULE
            disable_addon()
            assert addon_footprint() == before
    finally:
        if was_enabled:
            enable_addon()


def test_preferences_default_to_the_bundled_loopback_server(addon):
    prefs = preferences()
    assert prefs.backend_mode == "BUNDLED"
    assert prefs.bl_rna.properties["api_key"].subtype == "PASSWORD"
    client = addon.client.BackendClient(prefs.server_url)
    assert client.base_url == "http://127.0.0.1:8765" and client.is_local
    assert type(prefs).bl_idname == ADDON_MODULE  # registered under the extension's real package name


def test_api_key_is_not_saved_in_blend_files(addon, clean_scene, tmp_path):
    secret = "smk_" + "k3y" * 14
    use_server("http://127.0.0.1:8765", api_key=secret)
    clean_scene.safemotion.prompt = "a person jumps"
    path = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True, compress=False)
    data = path.read_bytes()
    assert b"a person jumps" in data  # scene settings are saved...
    assert secret.encode() not in data  # ...the key is not
    preferences().api_key = ""


def test_online_access_message_in_blenders_words(addon):
    problem = addon.preferences.online_access_problem
    url = "https://motion.example.org"
    assert problem(url, online_access=True, overridden=False) is None
    assert problem(url, online_access=True, overridden=True) is None
    offline = problem(url, online_access=False, overridden=False)
    assert offline.startswith(f"Online access required to reach the SafeMotion server at {url}.")
    assert "Enable online access in System preferences" in offline
    overridden = problem(url, online_access=False, overridden=True)
    assert "Launch Blender without --offline-mode" in overridden


def test_remote_server_is_refused_while_blender_is_offline(addon, clean_scene):
    """The real flag: the module build starts with online access off, so a non-loopback URL must be refused."""
    use_server("http://192.0.2.10:8765")  # TEST-NET-1: never routed
    client_error = addon.client.BackendError
    if bpy.app.online_access:
        client = addon.preferences.client_from_preferences(bpy.context)
        assert not client.is_local
        return
    with pytest.raises(client_error, match="Online access required"):
        addon.preferences.client_from_preferences(bpy.context)
    clean_scene.safemotion.prompt = "a person walks"
    with pytest.raises(RuntimeError, match="Online access required"):
        bpy.ops.safemotion.generate()
    assert len(bpy.data.objects) == 0 and len(bpy.data.actions) == 0
    # a loopback URL needs no online access (nothing listens there: the request itself fails)
    use_server("http://127.0.0.1:9")
    assert addon.preferences.client_from_preferences(bpy.context).is_local


def test_client_reports_a_refused_connection(addon):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens on it
    client = addon.client.BackendClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(addon.client.BackendError) as caught:
        client.health()
    assert caught.value.status is None
    assert str(caught.value) == (f"SafeMotion server at http://127.0.0.1:{port} is not reachable: connection refused. "
                                 "Start it in Preferences ▸ Add-ons ▸ SafeMotion or check the URL.")


def test_client_times_out_on_a_server_that_never_answers(addon):
    with socket.socket() as listener:  # accepts connections (backlog) but never sends a byte
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = addon.client.BackendClient(url, timeout=0.5)
        with pytest.raises(addon.client.BackendError, match=r"did not answer within 0\.5 s \(GET /v1/health\)"):
            client.health()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8765", "127.0.0.1:8765", "http://127.0.0.1:99999", "http://"])
def test_client_refuses_bad_urls(addon, url):
    with pytest.raises(addon.client.BackendError, match="is not valid"):
        addon.client.BackendClient(url)


def test_wire_arrays_round_trip_and_bad_payloads_are_refused(addon):
    client = addon.client
    np = pytest.importorskip("numpy")
    array = np.arange(24, dtype=np.float64).reshape(2, 4, 3) / 7
    payload = client.encode_array(array)
    assert payload["dtype"] == "float32" and payload["shape"] == [2, 4, 3]
    np.testing.assert_allclose(client.decode_array(payload), array, rtol=1e-7)
    with pytest.raises(client.BackendError, match="do not fit shape"):
        client.decode_array({**payload, "shape": [2, 4, 4]}, "smpl.pose")
    with pytest.raises(client.BackendError, match="not base64"):
        client.decode_array({**payload, "data": "***"})


# ---------------------------------------------------------------------------------------------- bundled server

def test_interpreter_checks_say_how_to_fix(addon, tmp_path):
    process = addon.backend_process
    error = addon.client.BackendError
    assert process.check_interpreter(sys.executable) == __import__("safemotion").__version__
    with pytest.raises(error, match="No Python interpreter is set"):
        process.check_interpreter("  ")
    with pytest.raises(error, match="was not found or is not executable"):
        process.check_interpreter(str(tmp_path / "no-python"))
    env = tmp_path / "bare-env"  # a real environment without the backend
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    bare_python = env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    with pytest.raises(error, match=r"cannot import the SafeMotion backend \(ModuleNotFoundError: No module named "
                                    r"'safemotion'\)\. Install it into that environment"):
        process.check_interpreter(str(bare_python))


def test_bundled_server_reports_why_it_stopped(addon, tmp_path):
    process = addon.backend_process
    server = process.BundledServer(process.ServerConfig(python=sys.executable, data_dir=tmp_path / "data",
                                                        model=str(tmp_path / "no-model")))
    server.start()
    with pytest.raises(addon.client.BackendError, match=r"stopped while starting \(exit status 2\): safemotion: "
                                                        r"error: model .*no-model.* not found"):
        server.wait_ready(60)
    assert not server.running


def test_generate_starts_the_bundled_server_which_stops_with_the_addon(addon, clean_scene, tmp_path, monkeypatch):
    """Bundled mode with no server running: Generate starts one (this venv's Python, the tiny model), waits for it
    and writes the take; the server is reused while its settings stay, and disabling the add-on stops it."""
    server_support = pytest.importorskip("server_support")
    model = server_support.build_tiny_lcr_model(tmp_path / "tiny-lcr")
    monkeypatch.setenv("BLENDER_USER_EXTENSIONS", str(tmp_path / "extensions"))  # the server's data folder
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    prefs = preferences()
    prefs.backend_mode, prefs.python_path, prefs.model_path = "BUNDLED", sys.executable, str(model)
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed, settings.seed = "a person walks forward", 1.0, False, 3
    process = addon.backend_process
    assert process.current() is None
    try:
        assert bpy.ops.safemotion.generate() == {"FINISHED"}
        assert [take.seed for take in settings.takes] == [3] and settings.takes[0].frames == 20
        server = process.current()
        assert server.running and server.url.startswith("http://127.0.0.1:")
        data_dir = tmp_path / "extensions" / ".user" / "safemotion_tests" / "safemotion" / "server"
        assert server.config.data_dir == data_dir and (data_dir / "safemotion.db").is_file()
        client = addon.preferences.client_from_preferences(bpy.context)
        assert client.base_url == server.url and client.health()["model"] == "tiny-lcr"
        assert bpy.ops.safemotion.check_connection() == {"FINISHED"}
        assert bpy.ops.safemotion.server_start() == {"FINISHED"} and process.current() is server  # reused
    finally:
        started = process.current()
        disable_addon()  # unregister stops the server
        enable_addon()
    assert started is not None and started.process.poll() is not None and process.current() is None


# ---------------------------------------------------------------------------------------------- drawing

class Host:
    """`self` for a draw function: a layout, and attribute access forwarded to the real object (if any)."""

    def __init__(self, layout, real=None):
        self.layout = layout
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_panels_and_preferences_draw_with_real_names(addon, clean_scene):
    generated = addon.ops_generate
    settings = clean_scene.safemotion
    take = settings.takes.add()
    take.name = "walk #1"
    entry = settings.flagged.add()
    entry.name, entry.spans = "walk #2", "1-4"
    addon.safety.fill_safety(entry.safety, {"flagged": True, "hit_ratio": 0.3, "threshold": 0.2, "decision":
                                            "sanitized", "concept": "violence", "reason": "flagged: 30 %"})
    settings.last_safety.decision = "pass"
    calls: list = []
    for panel in addon.panels.CLASSES:
        if issubclass(panel, bpy.types.Panel):
            assert getattr(panel, "poll", lambda context: True)(bpy.context)
            panel.draw(Host(CheckingLayout(calls)), bpy.context)
        else:
            for index, item in enumerate(settings.takes if "takes" in panel.__name__ else settings.flagged):
                panel.draw_item(None, bpy.context, CheckingLayout(calls), settings, item, 0, settings, "", index)
    for mode in ("BUNDLED", "REMOTE"):
        preferences().backend_mode = mode
        type(preferences()).draw(Host(CheckingLayout(calls), preferences()), bpy.context)
    preferences().backend_mode = "BUNDLED"
    operators = {name for kind, name in calls if kind == "operator"}
    assert {generated.SAFEMOTION_OT_generate.bl_idname, generated.SAFEMOTION_OT_apply_take.bl_idname,
            generated.SAFEMOTION_OT_discard_take.bl_idname, "safemotion.export_safety_report",
            "safemotion.server_start", "safemotion.check_connection"} <= operators
    assert {("prop", "prompt"), ("prop", "api_key"), ("list", "SAFEMOTION_UL_flagged")} <= set(calls)
    assert ("label", "Flagged — sanitized") in calls
