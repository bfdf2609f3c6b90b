"""Add-on preferences: which server to talk to (a bundled local one, or a URL with an API key), and the client for it.

The preferences belong to the add-on's package (`bl_ext.<repo>.safemotion` when installed as an extension), so they
are stored with Blender's user preferences, never in a scene or .blend file; the API key is a PASSWORD property.
Before any request to a server that is not on this machine, Blender's read-only `bpy.app.online_access` is checked.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import bpy

from . import backend_process
from .client import BackendClient, BackendError, check_url, url_is_local

ADDON_PACKAGE = __package__
DEFAULT_URL = "http://127.0.0.1:8765"
BUNDLED_START_TIMEOUT_S = 300.0  # loading the model on CPU can take minutes
SERVER_FOLDER = "server"


def online_access_problem(url: str, online_access: bool, overridden: bool) -> str | None:
    """Why a request to the non-local server `url` may not be sent, in Blender's words, or None when it may."""
    if online_access:
        return None
    message = f"Online access required to reach the SafeMotion server at {url}."
    if overridden:
        return message + " Launch Blender without --offline-mode"
    return message + " Enable online access in System preferences (Preferences ▸ System ▸ Network)"


def check_online_access(client: BackendClient) -> None:
    """BackendError when `client`'s server is not local and Blender's online access is off."""
    if client.is_local:
        return
    problem = online_access_problem(client.base_url, bpy.app.online_access,
                                    getattr(bpy.app, "online_access_override", False))
    if problem:
        raise BackendError(problem)


def addon_preferences(context: bpy.types.Context) -> SafeMotionPreferences:
    """This add-on's preferences."""
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    if addon is None:
        raise BackendError(f"the SafeMotion add-on ({ADDON_PACKAGE}) is not enabled; enable it in Preferences ▸ "
                           "Add-ons")
    return addon.preferences


def server_data_dir() -> Path:
    """Where the bundled server keeps its database and log: the extension's user folder (a temp folder otherwise)."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=SERVER_FOLDER, create=True))
    except ValueError:  # not installed as an extension (bl_ext.*), e.g. a legacy add-on install
        return Path(tempfile.gettempdir()) / "safemotion-server"


def server_config(prefs: SafeMotionPreferences) -> backend_process.ServerConfig:
    """How the bundled server is started, from the preferences."""
    return backend_process.ServerConfig(python=bpy.path.abspath(prefs.python_path), data_dir=server_data_dir(),
                                        model=bpy.path.abspath(prefs.model_path) or None)


def start_bundled_server(context: bpy.types.Context) -> backend_process.BundledServer:
    """The bundled server, started now if it is not running (returns without waiting for it to load)."""
    return backend_process.ensure_started(server_config(addon_preferences(context)))


def client_from_preferences(context: bpy.types.Context) -> BackendClient:
    """A client for the configured server: the bundled one (started and waited for) or the URL (online check)."""
    prefs = addon_preferences(context)
    if prefs.backend_mode == "BUNDLED":
        server = start_bundled_server(context)
        server.wait_ready(BUNDLED_START_TIMEOUT_S)
        return BackendClient(server.url, timeout=prefs.timeout)
    client = BackendClient(prefs.server_url, prefs.api_key or None, prefs.timeout)
    check_online_access(client)
    return client


def connector(context: bpy.types.Context, cancelled: threading.Event) -> Callable[[], BackendClient]:
    """What a request thread calls to reach the configured server (the bundled one started and waited for there,
    unless `cancelled` is set meanwhile); the preferences are read here, on the main thread."""
    prefs = addon_preferences(context)
    if prefs.backend_mode != "BUNDLED":
        client = client_from_preferences(context)
        return lambda: client
    config, timeout = server_config(prefs), prefs.timeout

    def connect() -> BackendClient:
        server = backend_process.ensure_started(config, cancelled)
        server.wait_ready(BUNDLED_START_TIMEOUT_S, cancelled)
        return BackendClient(server.url, timeout=timeout)
    return connect


_allow_grants: dict[tuple[str, str], bool] = {}  # (server URL, API key) -> the server grants `allow` to that key


def allow_granted(context: bpy.types.Context) -> bool:
    """Whether Check Connection found that the configured server grants `allow` to the configured key."""
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    if addon is None or addon.preferences.backend_mode != "REMOTE":
        return False
    prefs = addon.preferences
    return _allow_grants.get((prefs.server_url, prefs.api_key), False)


def check_allow(context: bpy.types.Context, client: BackendClient) -> bool:
    """Ask the server whether it grants `allow` to the configured key and remember the answer."""
    prefs = addon_preferences(context)
    granted = prefs.backend_mode == "REMOTE" and client.grants_allow()
    _allow_grants[(prefs.server_url, prefs.api_key)] = granted
    return granted


class SafeMotionPreferences(bpy.types.AddonPreferences):
    """Server connection of the SafeMotion add-on."""

    bl_idname = ADDON_PACKAGE

    backend_mode: bpy.props.EnumProperty(
        name="Server",
        items=(
            ("BUNDLED", "Bundled Local Server",
             "Start `python -m safemotion serve` on this machine with the Python interpreter below (no key, no "
             "internet)"),
            ("REMOTE", "Server URL", "Use a running SafeMotion server: on this machine or a studio server (API key)"),
        ),
        default="BUNDLED",
    )
    python_path: bpy.props.StringProperty(
        name="Python Interpreter", subtype="FILE_PATH",
        description="Python of the environment where the SafeMotion backend (torch + safemotion) is installed",
    )
    model_path: bpy.props.StringProperty(
        name="Model", subtype="DIR_PATH",
        description="Model directory for the bundled server; empty = the backend's default model",
    )
    server_url: bpy.props.StringProperty(name="URL", default=DEFAULT_URL,
                                         description="Address of the SafeMotion server, e.g. http://127.0.0.1:8765")
    api_key: bpy.props.StringProperty(
        name="API Key", subtype="PASSWORD",
        description="Key from `safemotion keys add` (not needed for a server on this machine without keys). Kept in "
                    "the user preferences, never in .blend files",
    )
    timeout: bpy.props.FloatProperty(name="Timeout", default=30.0, min=1.0, max=600.0, subtype="TIME_ABSOLUTE",
                                     unit="TIME_ABSOLUTE", description="Seconds to wait for each server request")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "backend_mode")
        if self.backend_mode == "BUNDLED":
            layout.prop(self, "python_path")
            layout.prop(self, "model_path")
            server = backend_process.current()
            row = layout.row()
            if server is not None and server.running:
                row.label(text=f"Running at {server.url}", icon="CHECKMARK")
                row.operator(SAFEMOTION_OT_server_stop.bl_idname, icon="CANCEL")
            else:
                row.label(text="Not running (starts on the first Generate)", icon="INFO")
                row.operator(SAFEMOTION_OT_server_start.bl_idname, icon="PLAY")
        else:
            layout.prop(self, "server_url")
            layout.prop(self, "api_key")
            try:
                local = url_is_local(check_url(self.server_url))
            except BackendError:
                local = False
                layout.label(text="The URL is not valid: use http://HOST:PORT", icon="ERROR")
            if not local and not bpy.app.online_access:
                layout.label(text="Prompts go to another machine: enable Allow Online Access in "
                                  "Preferences ▸ System ▸ Network", icon="INTERNET_OFFLINE")
        layout.prop(self, "timeout")
        layout.operator(SAFEMOTION_OT_check_connection.bl_idname, icon="URL")


class SAFEMOTION_OT_server_start(bpy.types.Operator):
    """Start the bundled SafeMotion server and wait until its model is loaded"""

    bl_idname = "safemotion.server_start"
    bl_label = "Start Server"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            server = start_bundled_server(context)
            server.wait_ready(BUNDLED_START_TIMEOUT_S)
        except BackendError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"SafeMotion server running at {server.url}")
        return {"FINISHED"}


class SAFEMOTION_OT_server_stop(bpy.types.Operator):
    """Stop the bundled SafeMotion server"""

    bl_idname = "safemotion.server_stop"
    bl_label = "Stop Server"

    def execute(self, context: bpy.types.Context) -> set[str]:
        backend_process.stop_server()
        return {"FINISHED"}


class SAFEMOTION_OT_check_connection(bpy.types.Operator):
    """Ask the configured SafeMotion server for its health and model"""

    bl_idname = "safemotion.check_connection"
    bl_label = "Check Connection"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            client = client_from_preferences(context)
            health = client.health()
            client.models()  # also checks the API key: /v1/health needs none
            allow = check_allow(context, client)
        except BackendError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Connected to SafeMotion {health.get('version', '?')} at {client.base_url}: model "
                              f"{health.get('model', '?')} on {health.get('device', '?')}"
                              + ("; this key may use the Allow policy" if allow else ""))
        return {"FINISHED"}


CLASSES = (SafeMotionPreferences, SAFEMOTION_OT_server_start, SAFEMOTION_OT_server_stop,
           SAFEMOTION_OT_check_connection)

