//! Runs test programs under older kernels: Debian's cloud kernels ([`KERNELS`]: 6.1 of Debian 12,
//! 5.10 of Debian 11) booted in QEMU (TCG) with a busybox initramfs.
//!
//! The host kernel (6.18) differs from what most production machines run (tracepoint layouts,
//! which resets are traced at all, fentry and kprobe availability, BPF helpers), so tests of
//! rst-trace also need to run on 6.1 and 5.10. `prepare` caches a kernel, the kernel modules
//! network-namespace tests need and a static busybox; `run` boots them with the given static
//! binaries and a shell script, and returns the serial console and the script's exit code.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Modules (and, resolved from their `depends=`, everything they need) that the cloud kernel
/// builds as modules but tests need: sock_diag for TCP (rst-trace samples listener queues over
/// it, and the guest has no modprobe to load it on demand), veth pairs, and nftables rules that
/// drop or reset connections. Everything else (BPF, BTF, tracepoints, kprobes, loopback,
/// namespaces, cgroup v2) is built in.
const MODULES: &[&str] = &[
    "inet_diag",
    "tcp_diag",
    "veth",
    "nf_tables",
    "nft_ct",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
];

/// The line the init prints after the script, followed by the script's exit code.
const EXIT_MARKER: &str = "VM-EXIT-CODE=";

const BUSYBOX: &str = "/bin/busybox";

/// A Debian cloud kernel the VM stage boots.
pub struct Kernel {
    /// How reports name it: `6.1`, `5.10`.
    pub name: &'static str,
    /// The packages' ABI prefix: `linux-image-{abi}N-cloud-amd64`.
    abi: &'static str,
    /// The Debian suite it comes from when the machine's own apt sources (Debian 12) lack it;
    /// fetched with a private apt configuration under the VM cache, never touching apt's own.
    suite: Option<&'static str>,
}

/// The kernels the VM stage boots, oldest first: Debian 11's 5.10 (also the kernel of Amazon
/// Linux 2) and Debian 12's 6.1.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        abi: "5.10.0-",
        suite: Some("bullseye"),
    },
    Kernel {
        name: "6.1",
        abi: "6.1.0-",
        suite: None,
    },
];
const QEMU: &str = "qemu-system-x86_64";

/// What `run` boots, as `prepare` cached it (under e.g. target/vm/) or found it installed.
pub struct VmAssets {
    /// The kernel image (vmlinuz).
    pub kernel: PathBuf,
    /// `uname -r` of that kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// A statically linked busybox, the VM's init and userland.
    pub busybox: PathBuf,
    /// Kernel modules to load at boot, in load order (dependencies first).
    pub modules: Vec<PathBuf>,
}

/// What a VM run printed and how its script ended.
pub struct VmRun {
    /// Everything the VM printed on its serial console (kernel messages, init and script output).
    pub console: String,
    /// The script's exit code.
    pub exit_code: i32,
    /// Wall time from starting QEMU until it exited.
    pub elapsed: Duration,
}

/// Downloads Debian's newest cloud kernel of `kernel`'s series and extracts it with its needed
/// modules into `cache_dir`, and installs busybox-static and QEMU where missing. Idempotent: a
/// second call only asks apt which kernel is newest.
pub fn prepare(cache_dir: &Path, kernel: &Kernel) -> anyhow::Result<VmAssets> {
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("could not create the VM cache {}", cache_dir.display()))?;
    // Debian's dynamically linked `busybox` package also installs /bin/busybox, so ask for the
    // static package by name.
    ensure_package("busybox-static", "busybox is the VM's init and shell")?;
    ensure_package("qemu-system-x86", "boots the VM")?;

    let apt = Apt::for_kernel(cache_dir, kernel)?;
    let release = newest_kernel_release(&apt, kernel)?;
    let release_dir = cache_dir.join(&release);
    let stamp = MODULES.join(",");
    // The stamp records the module list the directory was built for, so a changed list rebuilds it.
    if fs::read_to_string(release_dir.join("complete")).is_ok_and(|s| s == stamp) {
        eprintln!(
            "vm: kernel {} ({release}): cached in {}",
            kernel.name,
            release_dir.display()
        );
    } else {
        let deb = download_kernel(&apt, cache_dir, &release)?;
        extract_kernel(&deb, &release, &release_dir, &stamp)?;
    }
    let order = fs::read_to_string(release_dir.join("modules/order")).with_context(|| {
        format!(
            "the VM cache {} is damaged: delete it and run again",
            release_dir.display()
        )
    })?;
    Ok(VmAssets {
        kernel: release_dir.join("vmlinuz"),
        kernel_release: release,
        busybox: PathBuf::from(BUSYBOX),
        modules: order
            .lines()
            .map(|name| release_dir.join("modules").join(format!("{name}.ko")))
            .collect(),
    })
}

/// Boots the kernel with an initramfs holding busybox, `files` (host path, absolute guest path)
/// and `script`, which runs as root once the pseudo file systems are mounted, the modules
/// loaded and `lo` is up. Fails if the script's exit code never appears on the console, for
/// example because `timeout` passed or the kernel panicked.
pub fn run(
    assets: &VmAssets,
    files: &[(PathBuf, String)],
    script: &str,
    timeout: Duration,
) -> anyhow::Result<VmRun> {
    let initramfs = TempFile::new("cpio");
    fs::write(&initramfs.0, build_initramfs(assets, files, script)?)
        .with_context(|| format!("could not write the initramfs {}", initramfs.0.display()))?;

    let start = Instant::now();
    let mut child = Command::new(QEMU)
        // The initramfs holds the static test binaries (about 400 MB with their debug info),
        // unpacked into RAM beside the archive itself: at 1 GiB, 6.1 failed to unpack it
        // ("Initramfs unpacking failed: write error") once the binaries had grown.
        .args(["-accel", "tcg", "-m", "2048", "-smp", "2", "-no-reboot"])
        // Like -nographic, but the firmware does not also write to the serial port (with
        // terminal resets and screen clears that would end up in the console text).
        .args(["-display", "none", "-serial", "stdio"])
        // Tests use loopback only; without a NIC the firmware also skips network boot.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&initramfs.0)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("could not start {QEMU}: run vm::prepare first, it installs it")
        })?;
    // Read both pipes while QEMU runs so that it never blocks on a full pipe.
    let stdout = child.stdout.take().map(read_in_thread);
    let stderr = child.stderr.take().map(read_in_thread);

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("could not wait for QEMU")? {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // Killing can only fail if QEMU has just exited, which wait() then reports.
            let _ = child.kill();
            break child.wait().context("could not wait for QEMU")?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let console = joined(stdout).replace("\r\n", "\n");
    let stderr = joined(stderr);

    let exit_code = console
        .lines()
        .rev()
        .find_map(|line| line.split_once(EXIT_MARKER))
        // Only the leading number: a kernel message may have been printed into the same line.
        .and_then(|(_, code)| {
            let end = code
                .find(|c: char| !c.is_ascii_digit() && c != '-')
                .unwrap_or(code.len());
            code[..end].parse::<i32>().ok()
        });
    match exit_code {
        Some(exit_code) if !timed_out => Ok(VmRun {
            console,
            exit_code,
            elapsed,
        }),
        _ => {
            let why = if timed_out {
                format!("the VM did not finish within {timeout:?} and was killed")
            } else {
                format!(
                    "the VM stopped ({status}) without printing {EXIT_MARKER}: the kernel may have \
                     panicked or the script powered off"
                )
            };
            bail!(
                "{why}; QEMU's stderr: {:?}; last console lines:\n{}",
                stderr.trim(),
                tail(&console, 30)
            )
        }
    }
}

/// Installs a Debian package unless it is installed already.
fn ensure_package(package: &str, why: &str) -> anyhow::Result<()> {
    if package_installed(package) {
        return Ok(());
    }
    eprintln!("vm: installing Debian package {package} ({why})");
    if !apt_knows(package) {
        apt_update()?;
    }
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install {package}: run this as root on Debian 12"))
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn apt_knows(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn apt_update() -> anyhow::Result<()> {
    eprintln!("vm: apt-get update (apt's package lists lack what the VM needs)");
    run_command(Command::new("apt-get").args(["update", "-q"])).context(
        "apt-get update failed: run this as root on a machine that reaches Debian's mirrors",
    )
}

/// apt as the kernel needs it: the machine's own configuration, or a private one that adds a
/// suite (its sources list, package lists and cache under the VM cache).
struct Apt {
    /// `-o` options for apt-get and apt-cache.
    options: Vec<String>,
    /// The private configuration's package lists, when there is one.
    lists: Option<PathBuf>,
    suite: &'static str,
}

impl Apt {
    fn for_kernel(cache_dir: &Path, kernel: &Kernel) -> anyhow::Result<Self> {
        let Some(suite) = kernel.suite else {
            return Ok(Self {
                options: Vec::new(),
                lists: None,
                suite: "the machine's apt sources",
            });
        };
        let dir = cache_dir.join(format!("apt-{suite}"));
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for needed in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&needed)
                .with_context(|| format!("could not create {}", needed.display()))?;
        }
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!("deb http://deb.debian.org/debian {suite} main\n"),
        )
        .with_context(|| format!("could not write {}", sources.display()))?;
        let option = |name: &str, value: &Path| format!("{name}={}", value.display());
        Ok(Self {
            options: vec![
                option("Dir::Etc::sourcelist", &sources),
                "Dir::Etc::sourceparts=-".to_string(),
                option("Dir::State::Lists", &lists),
                option("Dir::Cache", &cache),
            ],
            lists: Some(lists),
            suite,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command
    }

    fn update(&self) -> anyhow::Result<()> {
        if self.lists.is_none() {
            return apt_update();
        }
        eprintln!(
            "vm: apt-get update of {} (a private apt configuration)",
            self.suite
        );
        run_command(self.command("apt-get").args(["update", "-q"])).with_context(|| {
            format!(
                "apt-get update of {} failed: run this as root on a machine that reaches Debian's \
                 mirrors",
                self.suite
            )
        })
    }
}

/// The newest ABI of `kernel`'s Debian cloud kernel that apt knows, e.g. `6.1.0-56-cloud-amd64`.
fn newest_kernel_release(apt: &Apt, kernel: &Kernel) -> anyhow::Result<String> {
    let pattern = format!(
        "^linux-image-{}[0-9]+-cloud-amd64$",
        kernel.abi.replace('.', r"\.")
    );
    let search = || -> anyhow::Result<Option<String>> {
        let out = apt
            .command("apt-cache")
            .args(["search", "--names-only", &pattern])
            .output()
            .context("could not run apt-cache: this needs Debian's apt")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next()?.strip_prefix("linux-image-"))
            .filter_map(|release| {
                let abi = release
                    .strip_prefix(kernel.abi)?
                    .strip_suffix("-cloud-amd64")?;
                Some((abi.parse::<u32>().ok()?, release.to_string()))
            })
            .max()
            .map(|(_, release)| release))
    };
    if let Some(release) = search()? {
        return Ok(release);
    }
    apt.update()?;
    search()?.with_context(|| {
        format!(
            "apt knows no linux-image-{}*-cloud-amd64 package in {}",
            kernel.abi, apt.suite
        )
    })
}

/// The kernel's .deb in `cache_dir`, downloaded unless it is there already.
fn download_kernel(apt: &Apt, cache_dir: &Path, release: &str) -> anyhow::Result<PathBuf> {
    let package = format!("linux-image-{release}");
    let find = || -> anyhow::Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        for entry in fs::read_dir(cache_dir)
            .with_context(|| format!("could not read the VM cache {}", cache_dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                return Ok(Some(path));
            }
        }
        Ok(None)
    };
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    eprintln!("vm: downloading Debian package {package} (a kernel tests run under)");
    run_command(
        apt.command("apt-get")
            // apt's download user (_apt) usually may not write into the cache directory; without
            // this apt downloads as root anyway, but with a warning.
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(cache_dir),
    )
    .with_context(|| {
        format!("could not download {package}: check that apt reaches Debian's mirrors")
    })?;
    find()?.with_context(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            cache_dir.display()
        )
    })
}

/// Fills `release_dir` with vmlinuz and the modules (plus dependencies) in `modules/`, with
/// their load order in `modules/order`. Builds beside it and renames, so an interrupted run
/// leaves no half-filled directory behind.
fn extract_kernel(
    deb: &Path,
    release: &str,
    release_dir: &Path,
    stamp: &str,
) -> anyhow::Result<()> {
    eprintln!(
        "vm: extracting vmlinuz and modules {} from {}",
        MODULES.join(" "),
        deb.display()
    );
    // Not with_extension: the release's dots would be taken for one.
    let mut partial = release_dir.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    remove_dir_if_present(&partial)?;
    let root = partial.join("deb");
    fs::create_dir_all(&root).with_context(|| format!("could not create {}", root.display()))?;
    run_command(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root)).with_context(|| {
        format!(
            "could not unpack {}: delete it and run again",
            deb.display()
        )
    })?;

    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    fs::copy(&vmlinuz, partial.join("vmlinuz"))
        .with_context(|| format!("{} has no {}", deb.display(), vmlinuz.display()))?;

    let mut index = BTreeMap::new();
    index_modules(
        &root.join(format!("lib/modules/{release}/kernel")),
        &mut index,
    )?;
    let mut order = Vec::new();
    for name in MODULES {
        add_with_dependencies(name, &index, &mut order)?;
    }
    let modules_dir = partial.join("modules");
    fs::create_dir_all(&modules_dir)?;
    for (name, path) in &order {
        fs::copy(path, modules_dir.join(format!("{name}.ko")))
            .with_context(|| format!("could not copy module {name}"))?;
    }
    let names: Vec<&str> = order.iter().map(|(name, _)| name.as_str()).collect();
    fs::write(modules_dir.join("order"), names.join("\n"))?;
    fs::remove_dir_all(&root)?;
    fs::write(partial.join("complete"), stamp)?;

    remove_dir_if_present(release_dir)?;
    fs::rename(&partial, release_dir)
        .with_context(|| format!("could not move the kernel into {}", release_dir.display()))?;
    eprintln!(
        "vm: kernel {release} with modules {} ready",
        names.join(" ")
    );
    Ok(())
}

/// Maps module names (as `depends=` spells them, with `_`) to their files under `dir`.
fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            // Debian's 6.1 and 5.10 kernels ship uncompressed modules, which busybox insmod loads
            // as is.
            if let Some(stem) = name.strip_suffix(".ko") {
                index.insert(stem.replace('-', "_"), path.clone());
            }
        }
    }
    Ok(())
}

/// Appends `name` and its file to `order` after the modules it depends on (a depth-first
/// post-order).
fn add_with_dependencies(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    order: &mut Vec<(String, PathBuf)>,
) -> anyhow::Result<()> {
    if order.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let path = index.get(name).with_context(|| {
        format!(
            "the kernel package has no module {name}: it may be built in now, drop it from MODULES"
        )
    })?;
    let bytes = fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    for dependency in module_dependencies(&bytes) {
        add_with_dependencies(&dependency, index, order)?;
    }
    order.push((name.to_string(), path.clone()));
    Ok(())
}

/// The `depends=` entry of a module's .modinfo section: NUL-terminated `key=value` strings, so
/// looking for the NUL-prefixed key finds it without parsing the ELF file.
fn module_dependencies(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(start) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &module[start + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// An uncompressed newc cpio archive, which every kernel with initramfs support unpacks (and
/// which saves compressing on the host and decompressing in an emulated CPU).
fn build_initramfs(
    assets: &VmAssets,
    files: &[(PathBuf, String)],
    script: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for dir in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/root",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init's stdin and stdout before devtmpfs is mounted.
    cpio.entry("/dev/console", 0o020_600, (5, 1), &[]);
    cpio.file("/bin/busybox", 0o755, &read(&assets.busybox)?);
    cpio.entry("/bin/sh", 0o120_777, (0, 0), b"busybox");

    let modules_dir = format!("/lib/modules/{}", assets.kernel_release);
    let mut insmods = String::new();
    for module in &assets.modules {
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let guest = format!("{modules_dir}/{name}");
        cpio.file(&guest, 0o644, &read(module)?);
        insmods.push_str(&format!(
            "insmod {guest} || echo \"vm: insmod {name} failed\"\n"
        ));
    }
    for (host, guest) in files {
        if !guest.starts_with('/') {
            bail!(
                "guest path {guest:?} for {} must be absolute",
                host.display()
            );
        }
        let mode = fs::metadata(host)
            .with_context(|| format!("could not read {} for the VM", host.display()))?
            .permissions()
            .mode();
        cpio.file(guest, mode & 0o7777, &read(host)?);
    }
    cpio.file("/test.sh", 0o755, script.as_bytes());
    cpio.file("/init", 0o755, init_script(&insmods).as_bytes());
    Ok(cpio.finish())
}

fn init_script(insmods: &str) -> String {
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
try() {{ "$@" || echo "vm: failed: $*"; }}
try mount -t proc proc /proc
try mount -t sysfs sysfs /sys
try mount -t devtmpfs devtmpfs /dev
try mount -t tracefs tracefs /sys/kernel/tracing
try mount -t bpf bpf /sys/fs/bpf
# cgroup2 is optional: tests that need it will say so.
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
{insmods}try ip link set lo up
cd /
sh /test.sh
code=$?
echo "{EXIT_MARKER}$code"
poweroff -f
"#
    )
}

/// Writes the newc cpio format: a 110-byte ASCII header per entry, then the NUL-terminated
/// name and the data, each padded to 4 bytes.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, path: &str) {
        self.parents(path);
        if self.dirs.insert(path.to_string()) {
            self.entry(path, 0o040_755, (0, 0), &[]);
        }
    }

    fn file(&mut self, path: &str, permissions: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100_000 | permissions, (0, 0), data);
    }

    /// The kernel's unpacker does not create missing parent directories.
    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
        {
            self.dir(parent);
        }
    }

    fn entry(&mut self, path: &str, mode: u32, (rdev_major, rdev_minor): (u32, u32), data: &[u8]) {
        self.inode += 1;
        let name = path.trim_start_matches('/');
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev_major,
            rdev_minor,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("could not read {} for the VM", path.display()))
}

/// A file in the temporary directory, removed when dropped, so that concurrent runs do not share
/// an initramfs and failed runs leave nothing behind.
struct TempFile(PathBuf);

impl TempFile {
    fn new(extension: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!(
            "rst-trace-vm-{}-{n}.{extension}",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Nothing to do about a temporary file that cannot be removed.
        let _ = fs::remove_file(&self.0);
    }
}

fn read_in_thread(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error ends the capture; what was read so far is still worth showing.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn joined(reader: Option<thread::JoinHandle<Vec<u8>>>) -> String {
    let bytes = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("could not remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not run {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
