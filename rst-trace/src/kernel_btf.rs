//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and enum names.
//!
//! rustc and bpf-linker emit no CO-RE relocations for Rust eBPF programs, so every offset into a
//! kernel struct that the programs need is resolved here at start-up and handed to them as a
//! global. Enum names come from here too whenever tracefs does not carry them.

use std::{cell::OnceCell, collections::HashMap, path::Path};

use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Backend, Btf, Type};
use fallible_iterator::FallibleIterator as _;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
    /// Struct and enum ids by name, made by one pass over every type on the first lookup: the
    /// mapped backend finds a name by decoding every type each time, and start-up looks up
    /// dozens (a third of its time went there).
    named: OnceCell<HashMap<String, Vec<u32>>>,
}

impl KernelBtf {
    /// Parses the running kernel's BTF.
    pub fn load() -> anyhow::Result<Self> {
        Self::from_file(Path::new(VMLINUX_BTF)).with_context(|| {
            format!(
                "this kernel exposes no BTF at {VMLINUX_BTF}; rst-trace needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (the default on Debian, Ubuntu, RHEL and Fedora kernels)"
            )
        })
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        // Mapped rather than parsed whole: a few MiB less memory and a faster start. Kernels
        // that cannot mmap sysfs BTF get the parsed copy.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
            .map_err(|error| anyhow!("{}: {error}", path.display()))?;
        Ok(Self {
            btf,
            named: OnceCell::new(),
        })
    }

    /// Byte offset of `path` (members separated by dots, e.g. `__sk_common.skc_state`) inside
    /// `struct name`, looking through anonymous structs and unions as C does.
    pub fn member_offset(&self, name: &str, path: &str) -> anyhow::Result<u32> {
        let offset_bits = self.member_bit_offset(name, path)?;
        if !offset_bits.is_multiple_of(8) {
            bail!("{name}.{path} is a bitfield");
        }
        Ok(offset_bits / 8)
    }

    /// Bit offset of `path` inside `struct name`, for bitfields (`sock_common.skc_ipv6only`).
    pub fn member_bit_offset(&self, name: &str, path: &str) -> anyhow::Result<u32> {
        let mut current = self.named_struct(name)?;
        let mut offset_bits = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (bits, member_type) = self
                .find_member(&current, part)?
                .ok_or_else(|| anyhow!("struct {name} has no member {path}"))?;
            offset_bits += bits;
            if parts.peek().is_some() {
                current = match self.strip_modifiers(member_type)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => bail!("{part} in struct {name} is not a struct"),
                };
            }
        }
        Ok(offset_bits)
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> anyhow::Result<usize> {
        Ok(self.named_struct(name)?.size())
    }

    /// Byte offset of a member, checked to lie inside the struct: the self-test behind every
    /// offset handed to the kernel programs.
    pub fn checked_offset(&self, name: &str, path: &str) -> anyhow::Result<u32> {
        let offset = self.member_offset(name, path)?;
        let size = self.struct_size(name)?;
        if offset as usize >= size {
            bail!("{name}.{path} at {offset} lies outside the {size}-byte struct");
        }
        Ok(offset)
    }

    /// The value of enum member `member` of `enum name`.
    pub fn enum_value(&self, name: &str, member: &str) -> Option<u64> {
        self.enum_values(name)?
            .into_iter()
            .find_map(|(n, value)| (n == member).then_some(value))
    }

    /// Whether the kernel has a function called `name`. A BPF helper's implementation is a
    /// function of the helper's name (`bpf_get_current_task_btf`), so this tells which helpers
    /// the kernel offers without loading a program.
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    /// Members of the enum called `name` as (name, value).
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, u64)>> {
        self.named_types(name)
            .into_iter()
            .find_map(|t| self.enum_members(&t))
    }

    /// The structs and enums called `name`.
    fn named_types(&self, name: &str) -> Vec<Type> {
        let index = self.named.get_or_init(|| self.index_names());
        index.get(name).map_or_else(Vec::new, |ids| {
            ids.iter()
                .filter_map(|id| self.btf.resolve_type_by_id(*id).ok())
                .collect()
        })
    }

    fn index_names(&self) -> HashMap<String, Vec<u32>> {
        let mut index: HashMap<String, Vec<u32>> = HashMap::new();
        let (first, last) = self.btf.base().type_id_range();
        for id in first..=last {
            let Ok(t) = self.btf.resolve_type_by_id(id) else {
                continue;
            };
            let name = match &t {
                Type::Struct(s) => self.btf.resolve_name(s).ok(),
                Type::Enum(e) => self.btf.resolve_name(e).ok(),
                Type::Enum64(e) => self.btf.resolve_name(e).ok(),
                _ => None,
            };
            if let Some(name) = name.filter(|name| !name.is_empty()) {
                index.entry(name).or_default().push(id);
            }
        }
        index
    }

    /// Members of the (possibly anonymous) enum that has a member called `member`. Scans every
    /// type, so it is for fallbacks only.
    pub fn enum_with_member(&self, member: &str) -> Option<Vec<(String, u64)>> {
        let mut types = self.btf.type_iter();
        while let Ok(Some(t)) = types.next() {
            if let Some(members) = self.enum_members(&t)
                && members.iter().any(|(name, _)| name == member)
            {
                return Some(members);
            }
        }
        None
    }

    fn enum_members(&self, t: &Type) -> Option<Vec<(String, u64)>> {
        match t {
            Type::Enum(e) => e
                .members
                .iter()
                .map(|m| Some((self.btf.resolve_name(m).ok()?, u64::from(m.val()))))
                .collect(),
            Type::Enum64(e) => e
                .members
                .iter()
                .map(|m| Some((self.btf.resolve_name(m).ok()?, m.val())))
                .collect(),
            _ => None,
        }
    }

    fn named_struct(&self, name: &str) -> anyhow::Result<btf_rs::Struct> {
        self.named_types(name)
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("struct {name} is not in the kernel's BTF"))
    }

    /// (bit offset, type) of member `name`, searching anonymous members recursively.
    fn find_member(&self, s: &btf_rs::Struct, name: &str) -> anyhow::Result<Option<(u32, Type)>> {
        for member in &s.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.btf.resolve_chained_type(member)?;
            if member_name == name {
                return Ok(Some((member.bit_offset(), member_type)));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) =
                    self.strip_modifiers(member_type)?
                && let Some((bits, t)) = self.find_member(&inner, name)?
            {
                return Ok(Some((member.bit_offset() + bits, t)));
            }
        }
        Ok(None)
    }

    /// Follows typedef, const, volatile and restrict to the underlying type.
    fn strip_modifiers(&self, mut t: Type) -> anyhow::Result<Type> {
        loop {
            t = match &t {
                Type::Typedef(inner) => self.btf.resolve_chained_type(inner)?,
                Type::Const(inner) => self.btf.resolve_chained_type(inner)?,
                Type::Volatile(inner) => self.btf.resolve_chained_type(inner)?,
                Type::Restrict(inner) => self.btf.resolve_chained_type(inner)?,
                Type::TypeTag(inner) => self.btf.resolve_chained_type(inner)?,
                _ => return Ok(t),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name index finds exactly what a scan by name finds, for structs and enums that
    /// start-up looks up, in this machine's kernel BTF.
    #[test]
    fn the_name_index_agrees_with_a_scan_by_name() {
        let btf = KernelBtf::load().expect("the kernel's BTF");
        let index = btf.named.get_or_init(|| btf.index_names());
        for name in [
            "sock",
            "sock_common",
            "tcp_sock",
            "inet_connection_sock",
            "sk_buff",
            "task_struct",
            "pid",
            "upid",
            "file",
            "skb_drop_reason",
            "sk_rst_reason",
        ] {
            let scanned: Vec<u32> = btf
                .btf
                .resolve_ids_by_name(name)
                .unwrap_or_default()
                .into_iter()
                .filter(|id| {
                    matches!(
                        btf.btf.resolve_type_by_id(*id),
                        Ok(Type::Struct(_) | Type::Enum(_) | Type::Enum64(_))
                    )
                })
                .collect();
            assert!(!scanned.is_empty(), "{name} is not in this kernel's BTF");
            assert_eq!(index.get(name), Some(&scanned), "{name}");
        }
        assert_eq!(btf.struct_size("upid").ok(), Some(16));
    }
}
