"""A single-node Slurm on localhost for tests: munged, slurmctld and slurmd started in a
private temporary folder on free loopback ports, and stopped again.

Nothing here touches the system's own Slurm or munge set-up: the configuration, keys,
sockets, spool and logs all live in one folder, and the clients find it through
SLURM_CONF. Daemons run in the foreground as children, so stopping them is a kill of
known process ids, never a search by name.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def missing_programs():
    return [name for name in PROGRAMS if shutil.which(name) is None]


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(predicate, timeout, what, log_files=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    logs = "".join(f"\n--- {path}\n{_tail(path)}" for path in log_files)
    raise TimeoutError(f"{what} did not happen within {timeout} s{logs}")


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalSlurm:
    """start() brings the cluster up (node idle), stop() takes every daemon down."""

    def __init__(self, cpus=2):
        self.cpus = cpus
        self.folder = tempfile.mkdtemp(prefix="sightline-slurm-")
        self.processes = []
        self.env = None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout=60):
        munge = pwd.getpwnam("munge")
        folder = self.folder
        os.chmod(folder, 0o755)  # munged (user munge) and job steps must reach inside
        munge_folder = os.path.join(folder, "munge")
        os.mkdir(munge_folder, 0o700)
        key = os.path.join(munge_folder, "munge.key")
        with open(key, "wb") as handle:
            handle.write(os.urandom(1024))
        os.chmod(key, 0o600)
        for path in (munge_folder, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self.munge_socket = os.path.join(munge_folder, "munge.socket")
        self._spawn(["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={key}", f"--pid-file={munge_folder}/munged.pid",
                     f"--seed-file={munge_folder}/munged.seed",
                     f"--log-file={munge_folder}/munged.log"],
                    user="munge", log=os.path.join(folder, "munged.out"))
        _wait(lambda: os.path.exists(self.munge_socket), timeout, "munged start",
              [os.path.join(munge_folder, "munged.log"), os.path.join(folder, "munged.out")])

        for name in ("spool", "state", "logs"):
            os.mkdir(os.path.join(folder, name))
        self.conf = os.path.join(folder, "slurm.conf")
        with open(self.conf, "w") as handle:
            handle.write(self._configuration())
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for name in list(self.env):
            # A test run inside a Slurm job must not hand the outer job's settings on.
            if name.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")) and name != "SLURM_CONF":
                del self.env[name]
        self._spawn(["slurmctld", "-D", "-i", "-f", self.conf],
                    log=os.path.join(folder, "logs", "slurmctld.out"))
        self._spawn(["slurmd", "-D", "-N", "localhost", "-f", self.conf],
                    log=os.path.join(folder, "logs", "slurmd.out"))
        _wait(self._node_idle, timeout, "the Slurm node becoming idle",
              [os.path.join(folder, "logs", name)
               for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out")])

    def stop(self):
        """Stop every daemon started here (slurmd first, so no job outlives it), then
        remove the folder."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.processes = []
        shutil.rmtree(self.folder, ignore_errors=True)

    def _spawn(self, command, log, user=None):
        with open(log, "wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, user=user,
                                       env=getattr(self, "env", None) or os.environ)
        self.processes.append(process)
        return process

    def _configuration(self):
        folder = self.folder
        return "\n".join([
            "ClusterName=sightline-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # A requeued job waits for its credentials to expire before it runs again
            # (120 s by default): a short lifetime keeps requeue tests short.
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "ReturnToService=2",
            # The node may claim more CPUs than the machine has: one per array task, so
            # the tasks run side by side as they would on a cluster.
            "SlurmdParameters=config_overrides",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "KillWait=30",
            "MinJobAge=600",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"StateSaveLocation={folder}/state",
            f"SlurmdSpoolDir={folder}/spool",
            f"SlurmctldPidFile={folder}/slurmctld.pid",
            f"SlurmdPidFile={folder}/slurmd.pid",
            f"SlurmctldLogFile={folder}/logs/slurmctld.log",
            f"SlurmdLogFile={folder}/logs/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            "PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # ------------------------------------------------------------------ clients

    def run(self, *command, timeout=30, check=True, cwd=None):
        result = subprocess.run(command, env=self.env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): "
                               f"{result.stderr.strip()}")
        return result.stdout

    def _node_idle(self):
        result = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], env=self.env,
                                capture_output=True, text=True, timeout=10)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def log(self, name):
        return _tail(os.path.join(self.folder, "logs", name), lines=60)
