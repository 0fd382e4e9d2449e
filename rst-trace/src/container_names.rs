//! Container and pod names from the container runtimes' own state on this host, with no API
//! server: what [`crate::container::Container::from_cgroup`] found as a hex id becomes the name
//! people know it by.
//!
//! | runtime | file (under its root) | what it gives |
//! | --- | --- | --- |
//! | docker | `<docker root>/containers/<id>/config.v2.json` | `Name`, `Config.Image`, and pod labels under cri-dockerd |
//! | containerd (CRI) | `<containerd state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json` | annotations |
//! | CRI-O | `<crio root>/overlay-containers/<id>/userdata/config.json` | annotations |
//!
//! The annotations read are the Kubernetes ones (`io.kubernetes.pod.name`, `.pod.namespace`,
//! `.pod.uid`, `io.kubernetes.container.name`), and containerd's and CRI-O's own spellings of the
//! same facts (`io.kubernetes.cri.sandbox-name`, ...). These files are other users' input (a
//! container's name and labels are chosen by whoever ran it): each is opened without following a
//! final symlink or blocking, read only if it is a regular file of at most [`MAX_FILE_BYTES`],
//! parsed with serde, and any field that is empty or longer than [`MAX_FIELD_BYTES`] is dropped.
//! A file that is missing or garbled gives null names, never an error. Sinks escape the names.
//!
//! Each id is read at most once every [`REREAD_AFTER`] (names change with `docker rename`; a
//! container's file may be written just after its first event), and the cache holds at most
//! [`CACHE_CAPACITY`] ids.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::container::Container;

/// Docker's default `--data-root`.
pub const DEFAULT_DOCKER_ROOT: &str = "/var/lib/docker";
/// containerd's default `state` directory.
pub const DEFAULT_CONTAINERD_STATE: &str = "/run/containerd";
/// CRI-O's default storage `root` (containers/storage).
pub const DEFAULT_CRIO_ROOT: &str = "/var/lib/containers/storage";

/// A runtime state file larger than this is not read: real ones are tens of KiB (a CRI
/// config.json carries the seccomp profile).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// A name longer than this is dropped rather than shown: Kubernetes names are at most 253
/// bytes, image references rarely pass 300.
pub const MAX_FIELD_BYTES: usize = 512;
/// How long a lookup (found or not) is trusted before the file is read again.
pub const REREAD_AFTER: Duration = Duration::from_secs(30);
/// Container ids remembered at once.
pub const CACHE_CAPACITY: usize = 1024;
/// containerd namespaces looked at for an id not in `k8s.io` (a bound on a directory listing).
const MAX_CONTAINERD_NAMESPACES: usize = 64;

/// Where each runtime keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRoots {
    /// dockerd's `--data-root`.
    pub docker: PathBuf,
    /// containerd's `state` directory (holds `io.containerd.runtime.v2.task`).
    pub containerd_state: PathBuf,
    /// CRI-O's storage root (holds `overlay-containers`).
    pub crio: PathBuf,
}

impl Default for RuntimeRoots {
    fn default() -> Self {
        Self {
            docker: PathBuf::from(DEFAULT_DOCKER_ROOT),
            containerd_state: PathBuf::from(DEFAULT_CONTAINERD_STATE),
            crio: PathBuf::from(DEFAULT_CRIO_ROOT),
        }
    }
}

/// What a runtime's state says about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod_uid: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

impl Names {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Which runtime's state had the id, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    runtime: &'static str,
    names: Names,
}

struct Entry {
    read_at: Instant,
    found: Option<Found>,
}

/// Container id -> names, read from the runtimes' state files and cached.
pub struct ContainerNames {
    roots: RuntimeRoots,
    cache: HashMap<String, Entry>,
}

impl Default for ContainerNames {
    fn default() -> Self {
        Self::new(RuntimeRoots::default())
    }
}

impl ContainerNames {
    pub fn new(roots: RuntimeRoots) -> Self {
        Self {
            roots,
            cache: HashMap::new(),
        }
    }

    /// Fills in `container`'s names from its runtime's state. Where the id turns up in another
    /// runtime's state than the cgroup path suggested (the cgroupfs driver names CRI-O's and
    /// containerd's containers alike), that runtime is the one named.
    pub fn fill(&mut self, container: &mut Container) {
        if !is_container_id(&container.id) {
            return;
        }
        let Some(found) = self.lookup(&container.id, container.runtime) else {
            return;
        };
        container.runtime = found.runtime;
        let names = found.names;
        container.name = names.name;
        container.image = names.image;
        container.pod = names.pod;
        container.namespace = names.namespace;
        if container.pod_uid.is_none() {
            container.pod_uid = names.pod_uid;
        }
    }

    fn lookup(&mut self, id: &str, runtime: &'static str) -> Option<Found> {
        if let Some(entry) = self.cache.get(id)
            && entry.read_at.elapsed() < REREAD_AFTER
        {
            return entry.found.clone();
        }
        let found = self.read(id, runtime);
        if self.cache.len() >= CACHE_CAPACITY && !self.cache.contains_key(id) {
            self.cache
                .retain(|_, entry| entry.read_at.elapsed() < REREAD_AFTER);
            if self.cache.len() >= CACHE_CAPACITY {
                self.cache.clear();
            }
        }
        self.cache.insert(
            id.to_string(),
            Entry {
                read_at: Instant::now(),
                found: found.clone(),
            },
        );
        found
    }

    /// The runtimes whose state may hold `id`, the one the cgroup path named first.
    fn read(&self, id: &str, runtime: &'static str) -> Option<Found> {
        let order: &[&'static str] = match runtime {
            "docker" => &["docker"],
            // The cgroupfs driver's `/kubepods/.../<id>` does not say which CRI runtime (or
            // cri-dockerd) made it.
            "containerd" => &["containerd", "cri-o", "docker"],
            "cri-o" => &["cri-o", "containerd"],
            _ => &[],
        };
        order.iter().find_map(|runtime| {
            let names = match *runtime {
                "docker" => docker_names(&read_bounded(&docker_config(&self.roots.docker, id))?),
                "containerd" => self.containerd_names(id),
                _ => oci_names(&read_bounded(&crio_config(&self.roots.crio, id))?),
            }?;
            Some(Found { runtime, names })
        })
    }

    /// The bundle of `id` in the `k8s.io` namespace (where the CRI plugin puts Kubernetes'
    /// containers), else in any other containerd namespace.
    fn containerd_names(&self, id: &str) -> Option<Names> {
        let tasks = self
            .roots
            .containerd_state
            .join("io.containerd.runtime.v2.task");
        if let Some(bytes) = read_bounded(&tasks.join("k8s.io").join(id).join("config.json")) {
            return oci_names(&bytes);
        }
        fs::read_dir(&tasks)
            .ok()?
            .flatten()
            .take(MAX_CONTAINERD_NAMESPACES)
            .filter(|namespace| namespace.file_name() != "k8s.io")
            .find_map(|namespace| read_bounded(&namespace.path().join(id).join("config.json")))
            .and_then(|bytes| oci_names(&bytes))
    }
}

fn docker_config(root: &Path, id: &str) -> PathBuf {
    root.join("containers").join(id).join("config.v2.json")
}

fn crio_config(root: &Path, id: &str) -> PathBuf {
    root.join("overlay-containers")
        .join(id)
        .join("userdata")
        .join("config.json")
}

/// Only ids of 64 hex digits are looked up: nothing else reaches a path.
fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bytes of a regular file of at most [`MAX_FILE_BYTES`]; `None` for anything else. Opened
/// with O_NONBLOCK so that a FIFO put in a file's place cannot stall the event path, and
/// O_NOFOLLOW so that a symlink there is not followed elsewhere.
fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() || metadata.len() > MAX_FILE_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).ok()?);
    // A file that grew since fstat is still read only up to the bound.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= MAX_FILE_BYTES).then_some(bytes)
}

/// Docker's `config.v2.json`: only the fields named are parsed; the rest is skipped.
#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Config")]
    config: Option<DockerContainerConfig>,
}

#[derive(Deserialize)]
struct DockerContainerConfig {
    #[serde(rename = "Image")]
    image: Option<String>,
    #[serde(rename = "Labels")]
    labels: Option<HashMap<String, String>>,
}

/// An OCI runtime spec (`config.json`): only its annotations.
#[derive(Deserialize)]
struct OciSpec {
    annotations: Option<HashMap<String, String>>,
}

/// Names from Docker's `config.v2.json` bytes; `None` when they are not such a file. Under
/// cri-dockerd (Kubernetes on Docker) the pod facts are the container's labels.
pub fn docker_names(bytes: &[u8]) -> Option<Names> {
    let config: DockerConfig = serde_json::from_slice(bytes).ok()?;
    let (image, labels) = match config.config {
        Some(inner) => (inner.image, inner.labels.unwrap_or_default()),
        None => (None, HashMap::new()),
    };
    let mut names = kubernetes_names(&labels);
    // Docker keeps the name with a leading `/` (`/web`); `docker ps` shows it without.
    names.name = config
        .name
        .map(|name| name.strip_prefix('/').map(str::to_string).unwrap_or(name))
        .and_then(field)
        .or(names.name);
    names.image = image.and_then(field).or(names.image);
    Some(names)
}

/// Names from an OCI `config.json`'s annotations; `None` when the bytes are not such a file, or
/// it names nothing (a bundle without Kubernetes annotations).
pub fn oci_names(bytes: &[u8]) -> Option<Names> {
    let spec: OciSpec = serde_json::from_slice(bytes).ok()?;
    let names = kubernetes_names(&spec.annotations.unwrap_or_default());
    (!names.is_empty()).then_some(names)
}

/// The first of `keys` present in `map`, as a field.
fn first(map: &HashMap<String, String>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|key| map.get(*key))
        .cloned()
        .and_then(field)
}

/// Kubernetes' facts in annotations or labels, in the spellings kubelet, containerd's CRI plugin
/// and CRI-O use.
fn kubernetes_names(map: &HashMap<String, String>) -> Names {
    Names {
        name: first(
            map,
            &[
                "io.kubernetes.container.name",
                "io.kubernetes.cri.container-name",
                "io.kubernetes.cri-o.ContainerName",
            ],
        ),
        image: first(
            map,
            &[
                "io.kubernetes.cri.image-name",
                "io.kubernetes.cri-o.ImageName",
            ],
        ),
        pod_uid: first(
            map,
            &["io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"],
        ),
        pod: first(
            map,
            &["io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"],
        ),
        namespace: first(
            map,
            &[
                "io.kubernetes.pod.namespace",
                "io.kubernetes.cri.sandbox-namespace",
            ],
        ),
    }
}

/// A name worth showing: not empty, not absurdly long.
fn field(text: String) -> Option<String> {
    (!text.is_empty() && text.len() <= MAX_FIELD_BYTES).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3";
    const UID: &str = "0b3d5f7a-1c2e-4a6b-8d9f-0123456789ab";

    /// A scratch directory laid out as the three runtimes lay out theirs.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("rst-trace-names-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn roots(&self) -> RuntimeRoots {
            RuntimeRoots {
                docker: self.0.join("docker"),
                containerd_state: self.0.join("containerd"),
                crio: self.0.join("storage"),
            }
        }

        fn write(&self, path: &Path, bytes: &[u8]) {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }

        fn docker(&self, id: &str, bytes: &[u8]) -> PathBuf {
            let path = docker_config(&self.roots().docker, id);
            self.write(&path, bytes);
            path
        }

        fn containerd(&self, namespace: &str, id: &str, bytes: &[u8]) -> PathBuf {
            let path = self
                .roots()
                .containerd_state
                .join("io.containerd.runtime.v2.task")
                .join(namespace)
                .join(id)
                .join("config.json");
            self.write(&path, bytes);
            path
        }

        fn crio(&self, id: &str, bytes: &[u8]) -> PathBuf {
            let path = crio_config(&self.roots().crio, id);
            self.write(&path, bytes);
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn filled(names: &mut ContainerNames, id: &str, runtime: &'static str) -> Container {
        let mut container = Container::new(id, runtime);
        names.fill(&mut container);
        container
    }

    /// The shape of a real dockerd 20.10 config.v2.json (abridged).
    fn docker_json(name: &str, image: &str) -> String {
        serde_json::json!({
            "StreamConfig": {},
            "State": {"Running": true, "Pid": 4242},
            "ID": ID,
            "Created": "2026-12-01T17:00:00.0Z",
            "Path": "/bin/sh",
            "Config": {
                "Hostname": "4f1c2b9a8e7d",
                "Env": ["PATH=/bin"],
                "Cmd": ["sh"],
                "Image": image,
                "Labels": {"com.example.team": "web"},
            },
            "Image": "sha256:0123",
            "Name": name,
            "Driver": "overlay2",
        })
        .to_string()
    }

    /// The annotations containerd's CRI plugin writes into a bundle's config.json.
    fn containerd_json() -> String {
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {"args": ["/pause"]},
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": "nginx",
                "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.25",
                "io.kubernetes.cri.sandbox-id": "ab".repeat(32),
                "io.kubernetes.cri.sandbox-name": "web-7d4f9c-x2x8q",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-uid": UID,
            },
            "linux": {"namespaces": [{"type": "network"}]},
        })
        .to_string()
    }

    /// CRI-O's annotations (abridged).
    fn crio_json() -> String {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {
                "io.kubernetes.container.name": "api",
                "io.kubernetes.cri-o.ContainerName": "k8s_api_billing-0_pay_uid_0",
                "io.kubernetes.cri-o.ImageName": "quay.io/acme/api:2",
                "io.kubernetes.pod.name": "billing-0",
                "io.kubernetes.pod.namespace": "pay",
                "io.kubernetes.pod.uid": UID,
            },
        })
        .to_string()
    }

    #[test]
    fn docker_names_come_from_config_v2() {
        let scratch = Scratch::new("docker");
        scratch.docker(ID, docker_json("/web", "rst-test:1").as_bytes());
        let mut names = ContainerNames::new(scratch.roots());
        let container = filled(&mut names, ID, "docker");
        assert_eq!(container.name.as_deref(), Some("web"));
        assert_eq!(container.image.as_deref(), Some("rst-test:1"));
        assert_eq!(container.runtime, "docker");
        assert_eq!(
            (container.pod, container.namespace, container.pod_uid),
            (None, None, None)
        );
    }

    #[test]
    fn containerd_bundles_name_the_pod() {
        let scratch = Scratch::new("containerd");
        scratch.containerd("k8s.io", ID, containerd_json().as_bytes());
        let mut names = ContainerNames::new(scratch.roots());
        let container = filled(&mut names, ID, "containerd");
        assert_eq!(
            container,
            Container {
                id: ID.to_string(),
                runtime: "containerd",
                name: Some("nginx".into()),
                image: Some("docker.io/library/nginx:1.25".into()),
                pod_uid: Some(UID.into()),
                pod: Some("web-7d4f9c-x2x8q".into()),
                namespace: Some("shop".into()),
            }
        );
        // A bundle in another containerd namespace is found too.
        let other = "cd".repeat(32);
        scratch.containerd("default", &other, containerd_json().as_bytes());
        assert_eq!(
            filled(&mut names, &other, "containerd").pod.as_deref(),
            Some("web-7d4f9c-x2x8q")
        );
    }

    #[test]
    fn crio_userdata_names_the_pod_and_corrects_the_cgroupfs_guess() {
        let scratch = Scratch::new("crio");
        scratch.crio(ID, crio_json().as_bytes());
        let mut names = ContainerNames::new(scratch.roots());
        // `/kubepods/burstable/pod<uid>/<id>` (cgroupfs) reads as containerd.
        let container = filled(&mut names, ID, "containerd");
        assert_eq!(container.runtime, "cri-o");
        assert_eq!(container.name.as_deref(), Some("api"));
        assert_eq!(container.image.as_deref(), Some("quay.io/acme/api:2"));
        assert_eq!(container.pod.as_deref(), Some("billing-0"));
        assert_eq!(container.namespace.as_deref(), Some("pay"));
        assert_eq!(container.pod_uid.as_deref(), Some(UID));
        assert_eq!(container.label(), "pay/billing-0/api");
    }

    #[test]
    fn the_pod_uid_of_the_cgroup_path_is_kept() {
        let scratch = Scratch::new("uid");
        scratch.crio(ID, crio_json().as_bytes());
        let mut names = ContainerNames::new(scratch.roots());
        let mut container = Container::new(ID, "cri-o");
        container.pod_uid = Some("from-the-cgroup".into());
        names.fill(&mut container);
        assert_eq!(container.pod_uid.as_deref(), Some("from-the-cgroup"));
    }

    #[test]
    fn lookups_are_cached_and_read_again_later() {
        let scratch = Scratch::new("cache");
        let path = scratch.docker(ID, docker_json("/web", "a:1").as_bytes());
        let mut names = ContainerNames::new(scratch.roots());
        assert_eq!(
            filled(&mut names, ID, "docker").name.as_deref(),
            Some("web")
        );
        // Renamed: the cache answers until the entry is older than REREAD_AFTER.
        fs::write(&path, docker_json("/api", "a:1")).unwrap();
        assert_eq!(
            filled(&mut names, ID, "docker").name.as_deref(),
            Some("web")
        );
        if let Some(entry) = names.cache.get_mut(ID) {
            entry.read_at -= REREAD_AFTER;
        }
        assert_eq!(
            filled(&mut names, ID, "docker").name.as_deref(),
            Some("api")
        );
        // Not found is cached too, and bounded like the rest.
        for n in 0..CACHE_CAPACITY + 10 {
            filled(&mut names, &format!("{n:064x}"), "docker");
        }
        assert!(names.cache.len() <= CACHE_CAPACITY, "{}", names.cache.len());
    }

    #[test]
    fn ids_that_are_not_64_hex_digits_reach_no_path() {
        let scratch = Scratch::new("ids");
        // A file where a traversal would land.
        scratch.write(
            &scratch.0.join("docker/containers/config.v2.json"),
            docker_json("/evil", "x").as_bytes(),
        );
        let mut names = ContainerNames::new(scratch.roots());
        for id in ["..", "", "web-1", &format!("{}/..", &ID[..61])] {
            assert_eq!(filled(&mut names, id, "docker").name, None, "{id}");
        }
        assert!(names.cache.is_empty());
        // systemd-nspawn machines and podman containers are not looked up.
        assert_eq!(filled(&mut names, ID, "systemd-nspawn").name, None);
        assert_eq!(filled(&mut names, ID, "podman").name, None);
    }

    #[test]
    fn fifos_symlinks_directories_and_oversized_files_are_not_read() {
        let scratch = Scratch::new("special");
        let mut names = ContainerNames::new(scratch.roots());
        let ids: Vec<String> = (1..=4).map(|n| format!("{n:064x}")).collect();
        // A FIFO nobody writes: opening it without O_NONBLOCK would block for ever.
        let fifo = docker_config(&scratch.roots().docker, &ids[0]);
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        // A symlink to a real config elsewhere.
        let real = scratch.0.join("elsewhere.json");
        fs::write(&real, docker_json("/linked", "x")).unwrap();
        let link = docker_config(&scratch.roots().docker, &ids[1]);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // A directory in the file's place.
        fs::create_dir_all(docker_config(&scratch.roots().docker, &ids[2])).unwrap();
        // A valid file just over the bound.
        let mut big = docker_json("/big", "x").into_bytes();
        big.pop();
        let padding = MAX_FILE_BYTES as usize + 1 - big.len() - 1;
        big.extend(std::iter::repeat_n(b' ', padding));
        big.push(b'}');
        assert_eq!(big.len() as u64, MAX_FILE_BYTES + 1);
        scratch.docker(&ids[3], &big);
        for id in &ids {
            assert_eq!(filled(&mut names, id, "docker").name, None, "{id}");
        }
    }

    #[test]
    fn over_long_and_empty_names_are_dropped_and_other_text_kept_for_the_sinks() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let names = docker_names(docker_json(&format!("/{long}"), "").as_bytes()).unwrap();
        assert_eq!((names.name, names.image), (None, None));
        // Control characters and non-ASCII survive here; the sinks escape them.
        let names = docker_names(docker_json("/a\u{1b}[2Jb", "é:1").as_bytes()).unwrap();
        assert_eq!(names.name.as_deref(), Some("a\u{1b}[2Jb"));
        assert_eq!(names.image.as_deref(), Some("é:1"));
        // A name of only "/" is empty once docker's slash is gone.
        assert_eq!(docker_names(br#"{"Name":"/"}"#).unwrap().name, None);
    }

    #[test]
    fn cri_dockerd_containers_carry_their_pod_in_labels() {
        let config = serde_json::json!({
            "Name": "/k8s_nginx_web-0_shop_uid_0",
            "Config": {
                "Image": "nginx:1.25",
                "Labels": {
                    "io.kubernetes.container.name": "nginx",
                    "io.kubernetes.pod.name": "web-0",
                    "io.kubernetes.pod.namespace": "shop",
                    "io.kubernetes.pod.uid": UID,
                },
            },
        });
        let names = docker_names(config.to_string().as_bytes()).unwrap();
        assert_eq!(names.name.as_deref(), Some("k8s_nginx_web-0_shop_uid_0"));
        assert_eq!(names.pod.as_deref(), Some("web-0"));
        assert_eq!(names.namespace.as_deref(), Some("shop"));
        assert_eq!(names.pod_uid.as_deref(), Some(UID));
    }

    /// A deterministic generator (xorshift64*): the same garbage on every run, so a failure
    /// reproduces.
    struct Garbage(u64);

    impl Garbage {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Garbage in every form a state file could take: random bytes, valid files cut short or
    /// with bytes flipped, JSON of the wrong types, deep nesting, duplicate keys, non-UTF-8.
    /// Each gives names or `None`, never a panic, and valid UTF-8 names only.
    #[test]
    fn garbage_state_files_give_no_names_and_never_panic() {
        let mut garbage = Garbage(0x9e37_79b9_7f4a_7c15);
        let valid = [
            docker_json("/web", "rst-test:1").into_bytes(),
            containerd_json().into_bytes(),
            crio_json().into_bytes(),
        ];
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{}".to_vec(),
            b"\"Name\"".to_vec(),
            br#"{"Name": 7, "Config": []}"#.to_vec(),
            br#"{"Name": "/a", "Name": "/b"}"#.to_vec(),
            br#"{"Config": {"Labels": {"io.kubernetes.pod.name": 1}}}"#.to_vec(),
            br#"{"annotations": ["io.kubernetes.pod.name"]}"#.to_vec(),
            br#"{"annotations": {"io.kubernetes.pod.name": null}}"#.to_vec(),
            b"{\"Name\": \"/\xff\xfe\"}".to_vec(),
            br#"{"Name": "/\ud800"}"#.to_vec(),
            [b"[".repeat(100_000), b"]".repeat(100_000)].concat(),
            [
                b"{\"a\":".repeat(10_000),
                b"1".to_vec(),
                b"}".repeat(10_000),
            ]
            .concat(),
        ];
        for _ in 0..300 {
            let len = (garbage.next() % 512) as usize;
            inputs.push(garbage.bytes(len));
        }
        for file in &valid {
            for _ in 0..200 {
                let cut = (garbage.next() as usize) % file.len();
                inputs.push(file[..cut].to_vec());
                let mut flipped = file.clone();
                for _ in 0..1 + garbage.next() % 4 {
                    let at = (garbage.next() as usize) % flipped.len();
                    flipped[at] = garbage.next() as u8;
                }
                inputs.push(flipped);
            }
        }
        let mut parsed = 0;
        for input in &inputs {
            for names in [docker_names(input), oci_names(input)]
                .into_iter()
                .flatten()
            {
                parsed += 1;
                for text in [
                    names.name,
                    names.image,
                    names.pod_uid,
                    names.pod,
                    names.namespace,
                ]
                .into_iter()
                .flatten()
                {
                    assert!(!text.is_empty() && text.len() <= MAX_FIELD_BYTES);
                }
            }
        }
        // Garbage that is still a JSON object parses (mostly to nothing): the generator reached
        // the parser's far side, not only its first byte.
        assert!(parsed > 10, "{parsed}");
        assert_eq!(docker_names(&[b'x'; 100]), None);
        assert_eq!(oci_names(br#"{"annotations": {}}"#), None);

        // The same garbage as real files under a root: null names, never an error.
        let scratch = Scratch::new("garbage");
        let mut names = ContainerNames::new(scratch.roots());
        for (n, input) in inputs.iter().enumerate().step_by(7) {
            let id = format!("{n:064x}");
            scratch.docker(&id, input);
            scratch.containerd("k8s.io", &id, input);
            scratch.crio(&id, input);
            for runtime in ["docker", "containerd", "cri-o"] {
                let container = filled(&mut names, &id, runtime);
                assert_eq!(container.id, id);
            }
        }
    }
}
