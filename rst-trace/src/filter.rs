//! Userspace filters: which attributed events reach the sinks. (`--pid` is also applied in the
//! kernel, to the running task and the socket's owner; here it is checked against the process the
//! event was attributed to.)

use crate::{cli::FilterArgs, event::Event};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub comms: Vec<String>,
    pub cgroups: Vec<String>,
    pub containers: Vec<String>,
    pub netns: Vec<u64>,
}

impl Filter {
    pub fn from_args(args: &FilterArgs) -> Self {
        Self {
            pids: args.pids.clone(),
            ports: args.ports.clone(),
            comms: args.comms.clone(),
            cgroups: args
                .cgroups
                .iter()
                .map(|path| path.trim_end_matches('/').to_string())
                .collect(),
            containers: args.containers.clone(),
            netns: args.netns.clone(),
        }
    }

    pub fn keeps(&self, event: &Event) -> bool {
        let process = event.process.as_ref();
        let closer = event.closed_by.as_ref();
        let any = |values: bool, test: &dyn Fn() -> bool| !values || test();
        any(!self.pids.is_empty(), &|| {
            self.pids.iter().any(|pid| {
                process.is_some_and(|p| p.pid == *pid)
                    || closer.is_some_and(|c| c.closer.pid == *pid)
            })
        }) && any(!self.ports.is_empty(), &|| {
            self.ports.iter().any(|port| event.has_port(*port))
        }) && any(!self.comms.is_empty(), &|| {
            process.is_some_and(|p| self.comms.contains(&p.comm))
        }) && any(!self.cgroups.is_empty(), &|| {
            event.cgroup.as_deref().is_some_and(|cgroup| {
                self.cgroups.iter().any(|prefix| {
                    cgroup == prefix
                        || prefix.is_empty()
                        || cgroup
                            .strip_prefix(prefix.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                })
            })
        }) && any(!self.containers.is_empty(), &|| {
            event
                .container
                .as_ref()
                .is_some_and(|c| self.containers.iter().any(|wanted| c.matches(wanted)))
        }) && any(!self.netns.is_empty(), &|| {
            event.netns.is_some_and(|netns| self.netns.contains(&netns))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        container::Container,
        event::{Endpoint, EventKind, Process, ProcessSource},
    };

    fn event() -> Event {
        Event {
            state: Some("ESTABLISHED".into()),
            local: Some(Endpoint {
                addr: [10, 0, 0, 1].into(),
                port: 8080,
            }),
            remote: Some(Endpoint {
                addr: [10, 0, 0, 2].into(),
                port: 50000,
            }),
            process: Some(Process {
                pid: 42,
                tid: 42,
                comm: "nginx".into(),
                source: ProcessSource::Owner,
                ns_pid: Some(7),
            }),
            netns: Some(4026532000),
            cgroup: Some("/system.slice/docker-abcdef.scope".into()),
            container: Some(Container::new("abcdef", "docker")),
            ..Event::for_test(EventKind::ResetReceived)
        }
    }

    #[test]
    fn each_filter_keeps_matching_events_only() {
        let e = event();
        assert!(Filter::default().keeps(&e));
        let keeps = |f: Filter| f.keeps(&e);
        assert!(keeps(Filter {
            pids: vec![42],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            pids: vec![43],
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            ports: vec![50000],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            ports: vec![1],
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            comms: vec!["nginx".into()],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            comms: vec!["curl".into()],
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            cgroups: vec!["/system.slice".into()],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            cgroups: vec!["/system.sl".into()],
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            containers: vec!["abc".into()],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            containers: vec!["bcd".into()],
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            netns: vec![4026532000],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            netns: vec![1],
            ..Filter::default()
        }));
    }

    #[test]
    fn events_without_a_process_fail_process_filters() {
        let mut e = event();
        e.process = None;
        assert!(
            !Filter {
                comms: vec!["nginx".into()],
                ..Filter::default()
            }
            .keeps(&e)
        );
        assert!(
            !Filter {
                pids: vec![42],
                ..Filter::default()
            }
            .keeps(&e)
        );
    }
}
