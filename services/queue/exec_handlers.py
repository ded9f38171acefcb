"""Handlers of the execution methods: environment, queue start/stop, RunEngine, lists."""

from __future__ import annotations

import functools

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.errors import Refused
from qserver.protocol import api
from qserver.protocol.worker import MetadataReply, PauseRequest, RunsReply, RunsRequest
from services.queue.core import QueueCore
from services.queue.execution import Executor
from services.queue.model import new_uid, normalize_item
from services.runtime.service_base import Handler

_runs_decoder = msgspec.json.Decoder(RunsReply)
_metadata_decoder = msgspec.json.Decoder(MetadataReply)


class ExecutionHandlers:
    def __init__(self, svc: QueueCore, executor: Executor) -> None:
        self.svc = svc
        self.ex = executor

    def handlers(self) -> dict[str, Handler]:
        return {
            "environment_open": self.on_environment_open,
            "environment_close": self.on_environment_close,
            "environment_destroy": self.on_environment_destroy,
            "queue_start": self.on_queue_start,
            "queue_stop": self.on_queue_stop,
            "queue_stop_cancel": self.on_queue_stop_cancel,
            "queue_autostart": self.on_queue_autostart,
            "queue_item_execute": self.on_queue_item_execute,
            "re_pause": self.on_re_pause,
            "re_resume": functools.partial(self._control, "resume"),
            "re_stop": functools.partial(self._control, "stop"),
            "re_abort": functools.partial(self._control, "abort"),
            "re_halt": functools.partial(self._control, "halt"),
            "re_runs": self.on_re_runs,
            "re_metadata": self.on_re_metadata,
            "plans_allowed": self.on_plans_allowed,
            "devices_allowed": self.on_devices_allowed,
            "plans_existing": self.on_plans_existing,
            "devices_existing": self.on_devices_existing,
            "permissions_get": self.on_permissions_get,
            "permissions_set": self.on_permissions_set,
            "permissions_reload": self.on_permissions_reload,
            "kernel_interrupt": self.on_kernel_interrupt,
            "config_get": self.on_config_get,
        }

    def _env_lock(self, lock_key: str | None) -> None:
        self.svc.model.check_lock("environment", lock_key)

    # ----- environment -----

    async def on_environment_open(self, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        reply = await self.ex.environment_open()
        return api.Reply(msg=reply.msg)

    async def on_environment_close(self, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        await self.ex.environment_close()
        return api.Reply()

    async def on_environment_destroy(self, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        await self.ex.environment_destroy()
        return api.Reply()

    # ----- queue execution -----

    async def on_queue_start(self, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        if not self.ex.env_exists:
            raise Refused("RE Worker environment does not exist.", bare=True)
        async with self.svc.write_lock:
            if self.ex.manager_state() != "idle":
                raise Refused("RE Manager is busy.", bare=True)
            await self.ex.reserve_kernel()
            await self.ex.set_flags(queue_running=True, stop_pending=False)
            await self.ex.advance()
        return api.Reply()

    async def on_queue_stop(self, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        state = self.ex.manager_state()
        if state not in ("executing_queue", "paused", "starting_queue"):
            raise Refused(
                # The state as the reference prints it (its enum's repr), verbatim.
                "Failed to pause the queue. Queue is not running. "
                f"Manager state: MState.{state.upper()}",
                bare=True,
            )
        async with self.svc.write_lock:
            await self.ex.set_flags(stop_pending=True)
        return api.Reply()

    async def on_queue_stop_cancel(self, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        async with self.svc.write_lock:
            await self.ex.set_flags(stop_pending=False)
        return api.Reply()

    async def on_queue_autostart(self, req: api.QueueAutostart) -> api.Reply:
        self._env_lock(req.lock_key)
        async with self.svc.write_lock:
            await self.ex.set_flags(autostart=req.enable)
            if req.enable:
                await self.ex.advance()
        return api.Reply()

    async def on_queue_item_execute(self, req: api.QueueItemExecute) -> api.ItemReply:
        self._env_lock(req.lock_key)
        if not self.ex.env_exists:
            raise Refused("RE Worker environment does not exist.")
        item = normalize_item(req.item, req.user, req.user_group)
        self.svc.catalog.validate(item)
        item = msgspec.structs.replace(item, item_uid=new_uid())
        async with self.svc.write_lock:
            state = self.ex.manager_state()
            if state != "idle":
                raise Refused("RE Manager is busy.")
            if item.item_type == "instruction":
                return api.ItemReply(item=item, qsize=len(self.svc.model.items))
            await self.ex.reserve_kernel()
            await self.ex.start_item(item, from_queue=False)
        return api.ItemReply(item=item, qsize=len(self.svc.model.items))

    # ----- RunEngine -----

    async def on_re_pause(self, req: api.RePause) -> api.Reply:
        self._env_lock(req.lock_key)
        if not self.ex.env_exists:
            raise Refused("Environment does not exist. Can not pause Run Engine.", bare=True)
        await self.ex.env_request("pause", PauseRequest(option=req.option))
        return api.Reply()

    async def _control(self, cmd: str, req: api.EmptyLocked) -> api.Reply:
        self._env_lock(req.lock_key)
        state = self.ex.manager_state()
        if state != "paused":
            raise Refused(f"RE Manager is not paused: current state is '{state}'", bare=True)
        if self.ex.kernel_busy_elsewhere():
            raise Refused("IPython kernel (RE Worker) is busy.", bare=True)
        await self.ex.env_request(cmd)
        return api.Reply()

    async def on_re_runs(self, req: api.ReRuns) -> api.RunsReply:
        if not self.ex.env_exists:
            return api.RunsReply(run_list=[], run_list_uid=self.svc.run_list_uid())
        reply = _runs_decoder.decode(await self.ex.env_raw("runs", RunsRequest(option=req.option)))
        if not reply.success:
            raise Refused(reply.msg, bare=True)
        return api.RunsReply(
            run_list=msgspec.to_builtins(reply.run_list), run_list_uid=reply.run_list_uid
        )

    # ----- IPython kernel (ADR 20) -----

    async def on_kernel_interrupt(self, req: api.KernelInterrupt) -> api.Reply:
        self._env_lock(req.lock_key)
        try:
            reply = await self.ex.kernel_interrupt(req.interrupt_task, req.interrupt_plan)
        except Refused as e:
            raise Refused(f"Failed to interrupt IPython kernel: {e.msg}") from None
        if not reply.success:
            raise Refused(reply.msg)
        await self.svc.publish_status()
        return api.Reply()

    async def on_config_get(self, req: api.Empty) -> api.ConfigGetReply:
        return api.ConfigGetReply(config={"ip_connect_info": await self.ex.connect_info()})

    async def on_re_metadata(self, req: api.Empty) -> api.ReMetadataReply:
        """`RE.md` of the environment, as it is now (the reference's texts on failure)."""
        if not self.ex.env_exists:
            return api.ReMetadataReply(
                success=False, msg="Environment does not exist. Cannot retrieve RE metadata."
            )
        try:
            reply = _metadata_decoder.decode(await self.ex.env_raw("metadata"))
        except (NatsTimeout, NoRespondersError):
            return api.ReMetadataReply(
                success=False, msg="Timeout occurred while processing the request"
            )
        if not reply.success:
            return api.ReMetadataReply(success=False, msg=reply.msg)
        return api.ReMetadataReply(re_metadata=reply.re_metadata)

    # ----- plans, devices, permissions -----

    async def on_plans_allowed(self, req: api.UserGroup) -> api.PlansAllowedReply:
        plans, _ = self.svc.catalog.allowed(req.user_group)
        return api.PlansAllowedReply(
            plans_allowed=plans, plans_allowed_uid=self.svc.catalog.plans_allowed_uid
        )

    async def on_devices_allowed(self, req: api.UserGroup) -> api.DevicesAllowedReply:
        _, devices = self.svc.catalog.allowed(req.user_group)
        return api.DevicesAllowedReply(
            devices_allowed=devices, devices_allowed_uid=self.svc.catalog.devices_allowed_uid
        )

    def _existing(self) -> tuple[dict, dict]:  # type: ignore[type-arg]
        lists = self.svc.catalog.existing
        if lists is None:
            raise Refused(
                "The lists of existing plans and devices are not known yet: open the environment"
            )
        return lists.plans_existing, lists.devices_existing

    async def on_plans_existing(self, req: api.Existing) -> api.PlansExistingReply:
        plans, _ = self._existing()
        return api.PlansExistingReply(
            plans_existing=plans, plans_existing_uid=self.svc.catalog.plans_existing_uid
        )

    async def on_devices_existing(self, req: api.Existing) -> api.DevicesExistingReply:
        _, devices = self._existing()
        return api.DevicesExistingReply(
            devices_existing=devices, devices_existing_uid=self.svc.catalog.devices_existing_uid
        )

    async def on_permissions_get(self, req: api.Empty) -> api.PermissionsReply:
        return api.PermissionsReply(user_group_permissions=self.svc.model.permissions or {})

    async def on_permissions_set(self, req: api.PermissionsSetRequest) -> api.Reply:
        perms = self.svc.catalog.check_permissions(req.user_group_permissions)
        async with self.svc.write_lock:
            self.svc.model.check_lock("queue", req.lock_key)
            await self.svc.set_permissions(perms)
        return api.Reply()

    async def on_permissions_reload(self, req: api.PermissionsReload) -> api.Reply:
        cat = self.svc.catalog
        async with self.svc.write_lock:
            self.svc.model.check_lock("queue", req.lock_key)
            if req.restore_plans_devices and cat.lists_file is not None:
                cat.set_existing(cat.read_lists_file(cat.lists_file))
            if req.restore_permissions:
                await self.svc.set_permissions(cat.read_permissions_file())
            else:
                cat.set_permissions(self.svc.model.permissions, new_uid())
        await self.svc.publish_status()
        return api.Reply()
