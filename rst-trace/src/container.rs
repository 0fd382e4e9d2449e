//! Containers from cgroup paths: the id and runtime as docker, containerd (CRI), CRI-O, podman and
//! systemd-nspawn name their cgroups, and the Kubernetes pod uid where the path carries one. The
//! names people know them by come from the runtimes' own state ([`crate::container_names`]).

use serde::Serialize;

/// The JSON `container` object. Field order is the printed order; fields are added, never renamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The runtime's container id (64 hex digits for OCI runtimes, the machine name for nspawn).
    pub id: String,
    /// `docker`, `containerd`, `cri-o`, `podman` or `systemd-nspawn`.
    pub runtime: &'static str,
    /// The container's name: docker's (`docker ps`), or the Kubernetes container name.
    pub name: Option<String>,
    /// The image the container was created from, as the runtime records it (`nginx:1.25`).
    pub image: Option<String>,
    /// The Kubernetes pod uid, with dashes.
    pub pod_uid: Option<String>,
    /// The Kubernetes pod name.
    pub pod: Option<String>,
    /// The Kubernetes namespace of the pod.
    pub namespace: Option<String>,
}

impl Container {
    /// A container known by id only.
    pub fn new(id: impl Into<String>, runtime: &'static str) -> Self {
        Self {
            id: id.into(),
            runtime,
            name: None,
            image: None,
            pod_uid: None,
            pod: None,
            namespace: None,
        }
    }

    /// Reads the container out of a cgroup path such as
    /// `/system.slice/docker-<id>.scope` or
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
    pub fn from_cgroup(path: &str) -> Option<Self> {
        let pod_uid = pod_uid(path);
        // The innermost component that names a container wins.
        for part in path.split('/').rev() {
            if let Some(container) = container_component(part, pod_uid.is_some()) {
                return Some(Self {
                    pod_uid,
                    ..container
                });
            }
        }
        None
    }

    /// What the text output shows: `namespace/pod/name` for a Kubernetes container, the name
    /// for others, and the short id (12 characters, as `docker ps` shows it) when the runtime's
    /// state named nothing. Unescaped: sinks escape it.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.pod, &self.name) {
            (Some(namespace), Some(pod), Some(name)) => format!("{namespace}/{pod}/{name}"),
            (Some(namespace), Some(pod), None) => format!("{namespace}/{pod}"),
            (_, _, Some(name)) => name.clone(),
            _ => self.short_id(),
        }
    }

    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> String {
        self.id.chars().take(12).collect()
    }

    /// Whether `--container WANTED` picks this container: an id prefix, its name (docker's may
    /// be given with its leading `/`), its pod name, or the `namespace/pod/name` the text shows.
    pub fn matches(&self, wanted: &str) -> bool {
        if wanted.is_empty() {
            return true;
        }
        let name = wanted.strip_prefix('/').unwrap_or(wanted);
        self.id.starts_with(wanted)
            || self.name.as_deref() == Some(name)
            || self.pod.as_deref() == Some(wanted)
            || (self.name.is_some() || self.pod.is_some()) && self.label() == wanted
    }
}

/// Scope and directory names runtimes give a container's cgroup.
fn container_component(part: &str, in_pod: bool) -> Option<Container> {
    let part = part.strip_suffix(".scope").unwrap_or(part);
    let prefixed = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ];
    for (prefix, runtime) in prefixed {
        if let Some(id) = part.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some(Container::new(id, runtime));
        }
    }
    // cgroupfs driver: /docker/<id>, /kubepods/burstable/pod<uid>/<id>.
    if is_container_id(part) {
        let runtime = if in_pod { "containerd" } else { "docker" };
        return Some(Container::new(part, runtime));
    }
    // systemd-nspawn: /machine.slice/systemd-nspawn@<name>.service (or machine-<name>.scope).
    if let Some(name) = part
        .strip_prefix("systemd-nspawn@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .filter(|name| !name.is_empty())
    {
        return Some(Container::new(unescape_systemd(name), "systemd-nspawn"));
    }
    None
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `kubepods-besteffort-pod<uid_with_underscores>.slice` or `pod<uid-with-dashes>`.
fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|part| {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        let uid = part
            .rsplit_once("-pod")
            .map(|(_, uid)| uid)
            .or_else(|| part.strip_prefix("pod"))?;
        let uid = uid.replace('_', "-");
        let is_uid = uid.len() == 36
            && uid.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        is_uid.then_some(uid)
    })
}

/// systemd escapes `-` in unit names as `\x2d`.
fn unescape_systemd(name: &str) -> String {
    name.replace("\\x2d", "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3";
    const UID: &str = "0b3d5f7a-1c2e-4a6b-8d9f-0123456789ab";

    fn container(path: &str) -> Option<(String, &'static str, Option<String>)> {
        Container::from_cgroup(path).map(|c| (c.id, c.runtime, c.pod_uid))
    }

    /// Found by the `container` fuzz target: `systemd-nspawn@.service` (the unit template, no
    /// machine name) is no container.
    #[test]
    fn the_nspawn_unit_template_is_no_container() {
        assert_eq!(
            Container::from_cgroup("/machine.slice/systemd-nspawn@.service"),
            None
        );
        let input = crate::tracefs::tests::fuzz_input("container", "nspawn-template");
        let path = String::from_utf8_lossy(&input);
        if let Some(container) = Container::from_cgroup(&path) {
            assert!(!container.id.is_empty(), "{container:?}");
        }
    }

    #[test]
    fn docker_with_systemd_and_cgroupfs_drivers() {
        let expected = Some((ID.to_string(), "docker", None));
        assert_eq!(
            container(&format!("/system.slice/docker-{ID}.scope")),
            expected
        );
        assert_eq!(container(&format!("/docker/{ID}")), expected);
    }

    #[test]
    fn podman_and_crio_and_containerd_scopes() {
        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope/container")),
            Some((ID.to_string(), "podman", None))
        );
        assert_eq!(
            container(&format!("/system.slice/crio-{ID}.scope")),
            Some((ID.to_string(), "cri-o", None))
        );
        assert_eq!(
            container(&format!("/system.slice/cri-containerd-{ID}.scope")),
            Some((ID.to_string(), "containerd", None))
        );
    }

    #[test]
    fn kubernetes_pods_in_every_qos_class() {
        let underscored = UID.replace('-', "_");
        for (qos, slice) in [
            ("burstable", "kubepods-burstable.slice/"),
            ("besteffort", "kubepods-besteffort.slice/"),
            ("", ""),
        ] {
            let pod = if qos.is_empty() {
                format!("kubepods-pod{underscored}.slice")
            } else {
                format!("kubepods-{qos}-pod{underscored}.slice")
            };
            let path = format!("/kubepods.slice/{slice}{pod}/cri-containerd-{ID}.scope");
            assert_eq!(
                container(&path),
                Some((ID.to_string(), "containerd", Some(UID.to_string()))),
                "{path}"
            );
        }
        // cgroupfs driver, guaranteed QoS: no QoS directory.
        assert_eq!(
            container(&format!("/kubepods/pod{UID}/{ID}")),
            Some((ID.to_string(), "containerd", Some(UID.to_string())))
        );
        assert_eq!(
            container(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/crio-{ID}.scope"
            )),
            Some((ID.to_string(), "cri-o", Some(UID.to_string())))
        );
    }

    #[test]
    fn systemd_nspawn_machines() {
        assert_eq!(
            container("/machine.slice/systemd-nspawn@web\\x2d1.service/payload"),
            Some(("web-1".to_string(), "systemd-nspawn", None))
        );
    }

    #[test]
    fn ordinary_services_are_not_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-0.slice/session-3.scope",
        ] {
            assert_eq!(container(path), None, "{path}");
        }
        assert_eq!(container("/system.slice/docker-notanid.scope"), None);
    }

    #[test]
    fn the_text_label_and_the_filter_use_names() {
        let mut docker = Container::new(ID, "docker");
        assert_eq!(docker.label(), &ID[..12]);
        assert!(docker.matches(&ID[..4]) && docker.matches(""));
        assert!(!docker.matches("web"));
        docker.name = Some("web".into());
        assert_eq!(docker.label(), "web");
        assert!(docker.matches("web") && docker.matches("/web") && docker.matches(&ID[..12]));
        assert!(!docker.matches("we") && !docker.matches("/web/"));

        let mut pod = Container::new(ID, "containerd");
        pod.name = Some("nginx".into());
        pod.pod = Some("web-7d4f".into());
        pod.namespace = Some("shop".into());
        assert_eq!(pod.label(), "shop/web-7d4f/nginx");
        for wanted in ["nginx", "web-7d4f", "shop/web-7d4f/nginx"] {
            assert!(pod.matches(wanted), "{wanted}");
        }
        assert!(!pod.matches("shop"));
        // A pod sandbox has a pod but no container name.
        pod.name = None;
        assert_eq!(pod.label(), "shop/web-7d4f");
        assert!(pod.matches("shop/web-7d4f"));
    }
}
