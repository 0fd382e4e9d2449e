//! tracefs: finding it, mounting it when the system has not, and reading event format files.
//!
//! A format file (`events/<system>/<event>/format`) is the kernel's own description of a
//! tracepoint record: each field's offset and size, and a `print fmt` whose `__print_symbolic`
//! tables name enum values (reasons, states) with the running kernel's numbering.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Where tracefs is mounted, newest convention first.
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// How tracefs was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracefs {
    /// Already mounted at this path.
    Mounted(PathBuf),
    /// Not mounted: rst-trace mounted it at this path.
    MountedByUs(PathBuf),
}

impl Tracefs {
    pub fn path(&self) -> &Path {
        match self {
            Self::Mounted(path) | Self::MountedByUs(path) => path,
        }
    }
}

/// Returns the tracefs directory, mounting tracefs at `/sys/kernel/tracing` when nothing is
/// mounted (aya and the kernel read tracepoint ids from it).
pub fn ensure_mounted() -> anyhow::Result<Tracefs> {
    if let Some(path) = find() {
        return Ok(Tracefs::Mounted(path));
    }
    let target = Path::new(TRACEFS_DIRS[0]);
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "tracefs is not mounted and mounting it failed; mount it with \
             `mount -t tracefs nodev {}`",
            target.display()
        )
    })?;
    match find() {
        Some(path) => Ok(Tracefs::MountedByUs(path)),
        None => bail!(
            "mounted tracefs at {} but it has no events/ directory: this kernel was built \
             without tracepoints (CONFIG_TRACEPOINTS)",
            target.display()
        ),
    }
}

/// The mounted tracefs directory, if any.
pub fn find() -> Option<PathBuf> {
    TRACEFS_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("events").is_dir())
}

/// Reads `events/<system>/<event>/format`; `Ok(None)` when this kernel has no such event.
pub fn read_format(
    tracefs: &Path,
    system: &str,
    event: &str,
) -> anyhow::Result<Option<EventFormat>> {
    let path = tracefs
        .join("events")
        .join(system)
        .join(event)
        .join("format");
    match fs::read_to_string(&path) {
        Ok(text) => EventFormat::parse(&text)
            .with_context(|| format!("{} could not be parsed", path.display()))
            .map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration without the name, e.g. `const void *` or `__u8` (for `__u8 saddr[28]`).
    pub c_type: String,
    /// Element count when the field is an array.
    pub array_len: Option<usize>,
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
}

impl Field {
    /// First byte after the field; `usize::MAX` for a field that would end beyond it (a format
    /// file's offset and size are not checked: the fuzz target found an offset near `usize::MAX`
    /// that wrapped around and passed the bounds checks).
    pub fn end(&self) -> usize {
        self.offset.saturating_add(self.size)
    }
}

/// A parsed format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub id: u32,
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl EventFormat {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(value) = line.strip_prefix("name:") {
                name = Some(value.trim().to_string());
            } else if let Some(value) = line.strip_prefix("ID:") {
                id = Some(value.trim().parse().context("ID is not a number")?);
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).with_context(|| format!("bad field line `{line}`"))?);
            } else if let Some(value) = line.strip_prefix("print fmt:") {
                print_fmt = value.trim().to_string();
            }
        }
        let Some(name) = name else {
            bail!("no `name:` line")
        };
        let Some(id) = id else { bail!("no `ID:` line") };
        if fields.is_empty() {
            bail!("no fields");
        }
        Ok(Self {
            name,
            id,
            fields,
            print_fmt,
        })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// The numeric `{ value, "NAME" }` pairs of `__print_symbolic(REC->field, ...)`. Pairs whose
    /// value is a symbol rather than a number (`{ TCP_ESTABLISHED, "TCP_ESTABLISHED" }`) are
    /// skipped: their numbers are not in the file.
    pub fn symbolic_names(&self, field: &str) -> BTreeMap<u64, String> {
        let needle = format!("__print_symbolic(REC->{field},");
        let mut names = BTreeMap::new();
        let mut rest = self.print_fmt.as_str();
        while let Some(start) = rest.find(&needle) {
            rest = &rest[start + needle.len()..];
            loop {
                rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
                let Some(body) = rest.strip_prefix('{') else {
                    break;
                };
                let Some(close) = body.find('}') else { break };
                if let Some((value, name)) = parse_symbol_pair(&body[..close]) {
                    names.insert(value, name);
                }
                rest = &body[close + 1..];
            }
        }
        names
    }
}

/// `field:const void * skaddr;<TAB>offset:16;<TAB>size:8;<TAB>signed:0;`
fn parse_field(line: &str) -> anyhow::Result<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        if let Some(value) = part.strip_prefix("field:") {
            decl = Some(value.trim());
        } else if let Some(value) = part.strip_prefix("offset:") {
            offset = Some(value.trim().parse()?);
        } else if let Some(value) = part.strip_prefix("size:") {
            size = Some(value.trim().parse()?);
        } else if let Some(value) = part.strip_prefix("signed:") {
            signed = value.trim() == "1";
        }
    }
    let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
        bail!("missing field, offset or size");
    };
    let (decl, array_len) = match decl.strip_suffix(']').and_then(|d| d.rsplit_once('[')) {
        Some((before, len)) => (before.trim(), Some(len.trim().parse()?)),
        None => (decl, None),
    };
    // The name starts after the last character that cannot be in one; that character may take
    // more than one byte (found by fuzzing: `__u8 saddr[\u{31e}`).
    let split = decl
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let name = decl[split..].to_string();
    if name.is_empty() {
        bail!("field has no name");
    }
    Ok(Field {
        name,
        c_type: decl[..split].trim().to_string(),
        array_len,
        offset,
        size,
        signed,
    })
}

/// ` 3, "NO_SOCKET" ` -> (3, "NO_SOCKET"); `None` for symbolic values.
fn parse_symbol_pair(pair: &str) -> Option<(u64, String)> {
    let (value, name) = pair.split_once(',')?;
    let value = value.trim();
    let value = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => value.parse().ok()?,
    };
    let name = name.trim().strip_prefix('"')?.strip_suffix('"')?;
    Some((value, name.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reads a format file captured from a real kernel (`tests/fixtures/tracefs/`, copied from the shared fixtures).
    pub(crate) fn fixture(kernel: &str, event: &str) -> EventFormat {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(kernel)
            .join(format!("{event}.format"));
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("fixture {}: {error}", path.display()));
        EventFormat::parse(&text).expect("fixture parses")
    }

    /// An input the `tracefs_format` fuzz target found, kept in `tests/fixtures/fuzz/`.
    pub(crate) fn fuzz_input(target: &str, name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz")
            .join(target)
            .join(name);
        fs::read(&path).unwrap_or_else(|error| panic!("fuzz input {}: {error}", path.display()))
    }

    #[test]
    fn a_field_name_after_a_multibyte_character_is_an_error_not_a_panic() {
        let input = fuzz_input(
            "tracefs_format",
            "crash-b02213bc12014dbbcda29d6d836311450b9f4ce3",
        );
        let text = std::str::from_utf8(&input).expect("the fuzz target feeds UTF-8 only");
        let error = EventFormat::parse(text).expect_err("no field has a name");
        assert_eq!(
            format!("{error:#}"),
            "bad field line `field:__u8 saddr[\u{31e};\toffset:22;\tsize:4;\tsigned:0;`: field has no name"
        );
        let field = parse_field("field:__u8 saddr\u{e9}t\u{31e}x;\toffset:0;\tsize:4;\tsigned:0;")
            .expect("a name after a combining mark");
        assert_eq!(
            (field.name.as_str(), field.c_type.as_str()),
            ("x", "__u8 saddr\u{e9}t\u{31e}")
        );
    }

    #[test]
    fn parses_send_reset_on_6_18() {
        let format = fixture("6.18", "tcp__tcp_send_reset");
        assert_eq!(format.name, "tcp_send_reset");
        assert_eq!(format.id, 2280);
        let skaddr = format.field("skaddr").unwrap();
        assert_eq!(
            (skaddr.offset, skaddr.size, skaddr.c_type.as_str()),
            (16, 8, "const void *")
        );
        let reason = format.field("reason").unwrap();
        assert_eq!(
            (reason.offset, reason.size, reason.c_type.as_str()),
            (28, 4, "enum sk_rst_reason")
        );
        let saddr = format.field("saddr").unwrap();
        assert_eq!(
            (saddr.offset, saddr.size, saddr.array_len),
            (32, 28, Some(28))
        );
        assert_eq!(format.field("daddr").unwrap().end(), 88);
        assert!(format.field("sport").is_none());
        assert!(format.field("common_pid").unwrap().signed);
    }

    #[test]
    fn parses_send_reset_on_6_1() {
        let format = fixture("6.1", "tcp__tcp_send_reset");
        assert!(format.field("reason").is_none());
        let family = format.field("family").unwrap();
        assert_eq!((family.offset, family.size), (32, 2));
        let saddr_v6 = format.field("saddr_v6").unwrap();
        assert_eq!(
            (saddr_v6.offset, saddr_v6.size, saddr_v6.array_len),
            (42, 16, Some(16))
        );
    }

    #[test]
    fn reads_reason_names_from_print_fmt() {
        let names = fixture("6.18", "tcp__tcp_send_reset").symbolic_names("reason");
        assert_eq!(names.get(&1).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(
            names.get(&9).map(String::as_str),
            Some("TCP_TIMEWAIT_SOCKET")
        );
        assert_eq!(
            names.get(&11).map(String::as_str),
            Some("TCP_ABORT_ON_CLOSE")
        );
        assert_eq!(names.get(&14).map(String::as_str), Some("TCP_STATE"));
        assert_eq!(names.len(), 26);
    }

    #[test]
    fn symbolic_state_tables_are_skipped_numeric_ones_are_read() {
        // tcp_send_reset names states by symbol, which the file does not resolve...
        let send = fixture("6.18", "tcp__tcp_send_reset");
        assert!(send.symbolic_names("state").is_empty());
        // ...while inet_sock_set_state carries the numbers.
        let set_state = fixture("6.1", "sock__inet_sock_set_state");
        let states = set_state.symbolic_names("newstate");
        assert_eq!(states.get(&1).map(String::as_str), Some("TCP_ESTABLISHED"));
        assert_eq!(states.get(&8).map(String::as_str), Some("TCP_CLOSE_WAIT"));
        assert_eq!(states.len(), 12);
    }

    #[test]
    fn drop_reason_numbers_differ_between_kernels() {
        let new = fixture("6.18", "skb__kfree_skb").symbolic_names("reason");
        let old = fixture("6.1", "skb__kfree_skb").symbolic_names("reason");
        let find = |names: &BTreeMap<u64, String>, name: &str| {
            names
                .iter()
                .find(|(_, n)| n.as_str() == name)
                .map(|(v, _)| *v)
        };
        assert_eq!(find(&new, "SOCKET_BACKLOG"), Some(29));
        assert_eq!(find(&old, "SOCKET_BACKLOG"), Some(20));
        assert_eq!(find(&new, "TCP_LISTEN_OVERFLOW"), Some(40));
        assert_eq!(find(&old, "TCP_LISTEN_OVERFLOW"), None);
    }

    #[test]
    fn rejects_text_that_is_not_a_format_file() {
        assert!(EventFormat::parse("").is_err());
        assert!(EventFormat::parse("name: x\nID: 1\nformat:\n").is_err());
        assert!(EventFormat::parse("name: x\nID: nope\n").is_err());
        assert!(
            EventFormat::parse("name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n")
                .is_err()
        );
    }
}
