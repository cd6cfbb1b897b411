//! A hold table read back from the kernel and checked against its [`HoldSpec`]: whether the
//! structure drops what it should, and which names its set holds.

use super::socket::{Object, Socket};
use super::wire::{self, Attr, find};
use super::{HoldSpec, IFNAME_LEN, NftError, PRIORITY, key_name};

/// Attempts at a read whose parts all come from one ruleset generation.
const ATTEMPTS: usize = 3;
/// Set flags that make it something other than a plain set of names (`NFT_SET_MAP`,
/// `NFT_SET_OBJECT`).
const NOT_A_PLAIN_SET: u32 = 0x8 | 0x40;

/// What the table is, reduced to what the hold depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldTable {
    /// The table exists at all (it vanishes with `nft flush ruleset`).
    pub exists: bool,
    /// The set exists and holds interface names.
    pub set_ok: bool,
    /// The chain is a filter chain on the spec's hook and priority with policy accept whose
    /// only rule is the hold rule (an extra rule before ours could `accept` and bypass it).
    pub chain_ok: bool,
    /// The names in the set.
    pub held: Vec<String>,
}

impl HoldTable {
    /// The structure drops every frame from (or to) a device named in the set.
    pub fn is_complete(&self) -> bool {
        self.exists && self.set_ok && self.chain_ok
    }

    pub fn holds(&self, device: &str) -> bool {
        self.held.iter().any(|p| p == device)
    }
}

/// Reads `spec`'s table: table, set, chain, rules and elements, all from one generation of
/// the ruleset (a commit between the parts is read again).
pub fn read_table(socket: &mut Socket, spec: &HoldSpec) -> Result<HoldTable, NftError> {
    for _ in 0..ATTEMPTS {
        let mut generations = Vec::new();
        let table = read_once(socket, spec, &mut generations)?;
        if generations.windows(2).all(|w| w[0] == w[1]) {
            return Ok(table);
        }
    }
    Err(NftError::Raced { request: "read table" })
}

/// The names in `spec`'s set; none when the set or its table is missing.
pub fn read_elements(socket: &mut Socket, spec: &HoldSpec) -> Result<Vec<String>, NftError> {
    let request = "dump elements";
    let attrs = wire::element_attrs(spec, &[]);
    match socket.dump(request, wire::NFT_MSG_GETSETELEM, spec, attrs) {
        Ok(objects) => elements(request, &objects),
        Err(NftError::Kernel { errno: nix::errno::Errno::ENOENT, .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn read_once(
    socket: &mut Socket,
    spec: &HoldSpec,
    generations: &mut Vec<u16>,
) -> Result<HoldTable, NftError> {
    let mut table = HoldTable::default();
    let Some(t) = socket.get("get table", wire::NFT_MSG_GETTABLE, spec, wire::table_attrs())?
    else {
        return Ok(table);
    };
    table.exists = true;
    generations.push(t.generation);
    let set = socket.get("get set", wire::NFT_MSG_GETSET, spec, wire::set_attrs(spec))?;
    if let Some(set) = set {
        generations.push(set.generation);
        table.set_ok = check("get set", set_ok(&set))?;
        table.held = read_elements(socket, spec)?;
    }
    let chain = socket.get("get chain", wire::NFT_MSG_GETCHAIN, spec, wire::chain_attrs())?;
    if let Some(chain) = chain {
        generations.push(chain.generation);
        let request = "dump rules";
        let rules = socket.dump(request, wire::NFT_MSG_GETRULE, spec, wire::rule_attrs())?;
        generations.extend(rules.iter().map(|r| r.generation));
        table.chain_ok = check("get chain", chain_ok(&chain, spec))?
            && match rules.as_slice() {
                [rule] => check(request, is_hold_rule(&rule.attrs, spec))?,
                _ => false,
            };
    }
    Ok(table)
}

fn check(request: &'static str, result: Result<bool, String>) -> Result<bool, NftError> {
    result.map_err(|detail| NftError::Malformed { request, detail })
}

fn attrs_of(object: &Object) -> Result<Vec<Attr<'_>>, String> {
    wire::attributes(&object.attrs)
}

/// A plain set of interface names.
fn set_ok(set: &Object) -> Result<bool, String> {
    let attrs = attrs_of(set)?;
    let u32_of = |kind| find(&attrs, kind).map(|a| a.be32()).transpose();
    let flags = u32_of(wire::NFTA_SET_FLAGS)?.unwrap_or(0);
    Ok(u32_of(wire::NFTA_SET_KEY_TYPE)? == Some(wire::TYPE_IFNAME)
        && u32_of(wire::NFTA_SET_KEY_LEN)? == Some(IFNAME_LEN as u32)
        && flags & NOT_A_PLAIN_SET == 0)
}

/// A filter chain on the spec's hook at our priority, policy accept.
fn chain_ok(chain: &Object, spec: &HoldSpec) -> Result<bool, String> {
    let attrs = attrs_of(chain)?;
    let Some(hook) = find(&attrs, wire::NFTA_CHAIN_HOOK) else {
        return Ok(false); // not a base chain: never sees a frame
    };
    let hook = hook.nested()?;
    let hooknum = find(&hook, wire::NFTA_HOOK_HOOKNUM).map(|a| a.be32()).transpose()?;
    let priority = find(&hook, wire::NFTA_HOOK_PRIORITY).map(|a| a.be32()).transpose()?;
    let policy = find(&attrs, wire::NFTA_CHAIN_POLICY).map(|a| a.be32()).transpose()?;
    let kind = find(&attrs, wire::NFTA_CHAIN_TYPE).map(|a| a.string()).transpose()?;
    Ok(hooknum == Some(spec.hook)
        && priority == Some(PRIORITY as u32)
        && policy == Some(wire::NF_ACCEPT)
        && kind == Some("filter"))
}

/// One expression of a rule: its name and its attributes.
fn expressions<'a>(rule: &[Attr<'a>]) -> Result<Vec<(&'a str, Vec<Attr<'a>>)>, String> {
    let Some(list) = find(rule, wire::NFTA_RULE_EXPRESSIONS) else {
        return Ok(Vec::new());
    };
    list.nested()?
        .iter()
        .map(|elem| {
            let e = elem.nested()?;
            let name = find(&e, wire::NFTA_EXPR_NAME).ok_or("expression without a name")?;
            let data = find(&e, wire::NFTA_EXPR_DATA).map(|d| d.nested()).transpose()?;
            Ok((name.string()?, data.unwrap_or_default()))
        })
        .collect()
}

/// Whether `attrs` has only attributes of `allowed` kinds: any other (a meta *set*, an
/// inverted or map lookup, a jump) makes the expression something else than ours.
fn only(attrs: &[Attr<'_>], allowed: &[u16]) -> bool {
    attrs.iter().all(|a| allowed.contains(&a.kind))
}

/// `<iif|oif>name @<set> drop`, with or without counters in between.
fn is_hold_rule(rule: &[u8], spec: &HoldSpec) -> Result<bool, String> {
    let rule = wire::attributes(rule)?;
    let exprs = expressions(&rule)?;
    let exprs: Vec<_> = exprs.into_iter().filter(|(name, _)| *name != "counter").collect();
    let [("meta", meta), ("lookup", lookup), ("immediate", immediate)] = exprs.as_slice() else {
        return Ok(false);
    };
    let be32 = |attrs: &[Attr<'_>], kind| find(attrs, kind).map(|a| a.be32()).transpose();
    let register = be32(meta, wire::NFTA_META_DREG)?;
    let meta_ok = only(meta, &[wire::NFTA_META_KEY, wire::NFTA_META_DREG])
        && be32(meta, wire::NFTA_META_KEY)? == Some(spec.name_match.meta_key())
        && register.is_some();
    let set = find(lookup, wire::NFTA_LOOKUP_SET).map(|a| a.string()).transpose()?;
    let allowed = [
        wire::NFTA_LOOKUP_SET,
        wire::NFTA_LOOKUP_SREG,
        wire::NFTA_LOOKUP_SET_ID,
        wire::NFTA_LOOKUP_FLAGS,
    ];
    let lookup_ok = only(lookup, &allowed)
        && set == Some(spec.set)
        && be32(lookup, wire::NFTA_LOOKUP_SREG)? == register
        && be32(lookup, wire::NFTA_LOOKUP_FLAGS)?.unwrap_or(0) == 0;
    let verdict = match find(immediate, wire::NFTA_IMMEDIATE_DATA) {
        Some(data) => match find(&data.nested()?, wire::NFTA_DATA_VERDICT) {
            Some(v) => {
                let v = v.nested()?;
                if only(&v, &[wire::NFTA_VERDICT_CODE]) {
                    be32(&v, wire::NFTA_VERDICT_CODE)?
                } else {
                    None
                }
            }
            None => None,
        },
        None => None,
    };
    let drop_ok = only(immediate, &[wire::NFTA_IMMEDIATE_DREG, wire::NFTA_IMMEDIATE_DATA])
        && be32(immediate, wire::NFTA_IMMEDIATE_DREG)? == Some(wire::NFT_REG_VERDICT)
        && verdict == Some(wire::NF_DROP);
    Ok(meta_ok && lookup_ok && drop_ok)
}

/// The names in a dump of set elements.
fn elements(request: &'static str, objects: &[Object]) -> Result<Vec<String>, NftError> {
    let decode = |object: &Object| -> Result<Vec<String>, String> {
        let attrs = attrs_of(object)?;
        let Some(list) = find(&attrs, wire::NFTA_SET_ELEM_LIST_ELEMENTS) else {
            return Ok(Vec::new());
        };
        list.nested()?
            .iter()
            .map(|elem| {
                let key = find(&elem.nested()?, wire::NFTA_SET_ELEM_KEY)
                    .ok_or("element without a key")?
                    .nested()?;
                let value = find(&key, wire::NFTA_DATA_VALUE).ok_or("key without a value")?;
                if value.payload.len() != IFNAME_LEN {
                    return Err(format!(
                        "a {}-byte key, not an interface name",
                        value.payload.len()
                    ));
                }
                Ok(key_name(value.payload))
            })
            .collect()
    };
    let mut names = Vec::new();
    for object in objects {
        names.extend(decode(object).map_err(|detail| NftError::Malformed { request, detail })?);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::nftables::wire::{Attrs, counter_expr, expr, hold_rule};
    use crate::l2::nftables::{Family, NameMatch};

    const SPEC: HoldSpec = HoldSpec {
        family: Family::Bridge,
        set: "held_ports",
        hook: 0,
        name_match: NameMatch::Input,
        counter: true,
    };

    fn rule(exprs: Attrs) -> Vec<u8> {
        Attrs::default().nested(wire::NFTA_RULE_EXPRESSIONS, exprs).bytes().to_vec()
    }

    #[test]
    fn our_rule_is_recognised_with_or_without_a_counter() {
        assert_eq!(is_hold_rule(&rule(hold_rule(&SPEC, 1)), &SPEC), Ok(true));
        let counted = Attrs::default()
            .nested(wire::NFTA_LIST_ELEM, counter_expr())
            .append(hold_rule(&SPEC, 1));
        assert_eq!(is_hold_rule(&rule(counted), &SPEC), Ok(true));
    }

    #[test]
    fn another_name_match_set_or_verdict_is_not_ours() {
        let oif = HoldSpec { name_match: NameMatch::Output, ..SPEC };
        assert_eq!(is_hold_rule(&rule(hold_rule(&oif, 1)), &SPEC), Ok(false));
        let other_set = HoldSpec { set: "other", ..SPEC };
        assert_eq!(is_hold_rule(&rule(hold_rule(&other_set, 1)), &SPEC), Ok(false));
        let accept = expr("immediate", Attrs::default().be32(wire::NFTA_IMMEDIATE_DREG, 0));
        assert_eq!(is_hold_rule(&rule(accept.append(hold_rule(&SPEC, 1))), &SPEC), Ok(false));
        assert_eq!(is_hold_rule(&rule(Attrs::default()), &SPEC), Ok(false));
    }

    #[test]
    fn an_inverted_lookup_is_not_ours() {
        let mut bytes = rule(hold_rule(&SPEC, 1));
        // Append NFTA_LOOKUP_FLAGS = NFT_LOOKUP_F_INV by rebuilding the lookup expression.
        let lookup = expr(
            "lookup",
            Attrs::default()
                .string(wire::NFTA_LOOKUP_SET, SPEC.set)
                .be32(wire::NFTA_LOOKUP_SREG, 1)
                .be32(wire::NFTA_LOOKUP_FLAGS, 1),
        );
        let meta = expr(
            "meta",
            Attrs::default().be32(wire::NFTA_META_KEY, 6).be32(wire::NFTA_META_DREG, 1),
        );
        let verdict = Attrs::default().be32(wire::NFTA_VERDICT_CODE, wire::NF_DROP);
        let data = Attrs::default().nested(wire::NFTA_DATA_VERDICT, verdict);
        let drop = expr(
            "immediate",
            Attrs::default()
                .be32(wire::NFTA_IMMEDIATE_DREG, 0)
                .nested(wire::NFTA_IMMEDIATE_DATA, data),
        );
        assert_eq!(is_hold_rule(&rule(meta.append(lookup).append(drop)), &SPEC), Ok(false));
        bytes.truncate(bytes.len() - 8);
        assert!(is_hold_rule(&bytes, &SPEC).is_err(), "a truncated rule is an error");
    }

    #[test]
    fn a_key_of_another_size_is_malformed() {
        let value = Attrs::default().put(wire::NFTA_DATA_VALUE, &[1, 2, 3, 4]);
        let elem = Attrs::default().nested(wire::NFTA_SET_ELEM_KEY, value);
        let list = Attrs::default().nested(wire::NFTA_LIST_ELEM, elem);
        let attrs = Attrs::default().nested(wire::NFTA_SET_ELEM_LIST_ELEMENTS, list);
        let object = Object { generation: 1, attrs: attrs.bytes().to_vec() };
        let err = elements("dump elements", &[object]).unwrap_err();
        assert!(err.to_string().contains("4-byte key"), "{err}");
    }
}
