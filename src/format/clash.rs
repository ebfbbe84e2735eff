//! Could two formats render the same string? SPEC 1.3 refuses a `PUT` whose new format could
//! render a string an earlier format of the prefix rendered (409 `FORMAT_CLASH`); this module
//! decides it, exactly for the model below, and finds an example string.
//!
//! A [`Rendering`] is a template with what its placeholders can show: the sequence values
//! it renders (a range: sequence prefixes know theirs from the counters), the prefix key,
//! the layout's `{dc}`/`{worker}` ranges, and whether `{flag}` may show `D`. Each is a
//! regular language over a string of *atoms*: a literal character, or a fixed-width run of
//! digits whose value lies in a range (`{month}` is two digits from 01 to 12; `{SEQ:N}` is a
//! choice of one such run per length, N digits for values up to 10^N - 1, then one run per
//! longer length, which never starts with 0). Each digit run is a small automaton (digits
//! read so far, and whether they still equal the range's lower or upper end), so two
//! languages intersect exactly when a breadth-first search over pairs of states, reading the
//! same character on both sides, reaches both ends; its path is the shortest common string.
//!
//! The model is exact for each placeholder on its own. It treats every placeholder occurrence
//! as independent, so it over-approximates (never misses a clash) only for templates that
//! repeat a field or combine correlated date fields (`{year}` with `{yy}` or `{date}`, a day
//! 31 in a 30-day month). `{flag}` is decided for the whole string at once (all `{flag}`s of a
//! number show the same thing), by searching each combination of the two sides' flags.
//! Pure code: no I/O, no clock (the date of the example is a hint passed in).

use std::collections::{HashMap, VecDeque};

use super::{Civil, NodeWidths, Part, Template};

/// The sequence values a format renders, both ends included; empty when `lo > hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Values {
    pub lo: u64,
    pub hi: u64,
}

impl Values {
    pub fn new(lo: u64, hi: u64) -> Values {
        Values { lo, hi }
    }

    pub fn is_empty(&self) -> bool {
        self.lo > self.hi
    }
}

/// Everything a format can render for one prefix.
#[derive(Clone, Copy, Debug)]
pub struct Rendering<'a> {
    pub template: &'a Template,
    /// What `{prefix}` shows.
    pub prefix: &'a str,
    pub nodes: NodeWidths,
    /// What `{SEQ…}` shows.
    pub values: Values,
    /// True when its numbers may be degraded (`{flag}` shows `D`): snowflake prefixes.
    pub degraded: bool,
}

/// Years a date field may show: the calendar of Unix time in four digits.
const YEARS: (u64, u64) = (1970, 9999);

/// A string both renderings may produce, the shortest there is (the date fields prefer
/// `hint`); `None` when they share none.
pub fn common_string(a: &Rendering<'_>, b: &Rendering<'_>, hint: Option<Civil>) -> Option<String> {
    let flags = |r: &Rendering<'_>| {
        if r.degraded && r.template.has("{flag}") {
            vec![false, true]
        } else {
            vec![false]
        }
    };
    let mut best: Option<String> = None;
    for fa in flags(a) {
        for fb in flags(b) {
            let (Some(la), Some(lb)) = (Lang::of(a, fa, hint), Lang::of(b, fb, hint)) else {
                continue;
            };
            if let Some(s) = intersect(&la, &lb)
                && best.as_ref().is_none_or(|b| s.len() < b.len())
            {
                best = Some(s);
            }
        }
    }
    best
}

/// A fixed-width run of digits whose value lies between `lo` and `hi` (zero-padded to the
/// width, one digit per byte); `prefer` is the value the example should show if it can.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Digits {
    lo: Vec<u8>,
    hi: Vec<u8>,
    prefer: Option<Vec<u8>>,
}

fn padded(value: u128, width: usize) -> Vec<u8> {
    let text = format!("{value:0width$}");
    text.bytes().map(|b| b - b'0').collect()
}

impl Digits {
    /// `width` digits from `lo` to `hi` (cut to what the width holds); `None` when empty.
    fn new(width: usize, lo: u128, hi: u128, prefer: Option<u128>) -> Option<Digits> {
        let hi = hi.min(10u128.pow(width as u32) - 1);
        (lo <= hi).then(|| Digits {
            lo: padded(lo, width),
            hi: padded(hi, width),
            prefer: prefer
                .filter(|p| (lo..=hi).contains(p))
                .map(|p| padded(p, width)),
        })
    }

    fn width(&self) -> usize {
        self.lo.len()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Atom {
    Lit(u8),
    /// One of these digit runs.
    Num(Vec<Digits>),
}

/// A rendering as a sequence of atoms.
struct Lang {
    atoms: Vec<Atom>,
}

impl Lang {
    /// The language of `r` with `{flag}` showing `D` (`flag`) or nothing; `None` when it
    /// renders nothing (no sequence value).
    fn of(r: &Rendering<'_>, flag: bool, hint: Option<Civil>) -> Option<Lang> {
        let mut atoms = Vec::new();
        let hint_of = |f: fn(&Civil) -> u32| hint.map(|c| u128::from(f(&c)));
        let num = |width: usize, lo: u64, hi: u64, prefer: Option<u128>| {
            Digits::new(width, u128::from(lo), u128::from(hi), prefer).map(|d| Atom::Num(vec![d]))
        };
        let year = || num(4, YEARS.0, YEARS.1, hint_of(|c| c.year));
        let month = || num(2, 1, 12, hint_of(|c| u32::from(c.month)));
        let day = || num(2, 1, 31, hint_of(|c| u32::from(c.day)));
        for part in &r.template.parts {
            let atom = match part {
                Part::Literal(s) => {
                    atoms.extend(s.bytes().map(Atom::Lit));
                    continue;
                }
                Part::Prefix => {
                    atoms.extend(r.prefix.bytes().map(Atom::Lit));
                    continue;
                }
                Part::Flag => {
                    if flag {
                        atoms.push(Atom::Lit(b'D'));
                    }
                    continue;
                }
                Part::Date => {
                    atoms.extend([year(), month()].into_iter().flatten());
                    day()
                }
                Part::Seq => Some(Atom::Num(seq_runs(r.template.seq_width, r.values))),
                Part::Year => year(),
                Part::Yy => num(2, 0, 99, hint_of(|c| c.year % 100)),
                Part::Month => month(),
                Part::Day => day(),
                Part::Hour => num(2, 0, 23, hint_of(|c| u32::from(c.hour))),
                Part::Dc => num(r.nodes.dc(), 0, r.nodes.dc_max(), None),
                Part::Worker => num(r.nodes.worker(), 0, r.nodes.worker_max(), None),
            };
            atoms.extend(atom);
        }
        let renders = atoms
            .iter()
            .all(|a| !matches!(a, Atom::Num(runs) if runs.is_empty()));
        renders.then_some(Lang { atoms })
    }
}

/// `{SEQ:width}` for `values`: zero-padded to `width` digits below 10^width, then one run
/// per longer length (which starts with a non-zero digit, being at least 10^(len-1)).
fn seq_runs(width: u8, values: Values) -> Vec<Digits> {
    if values.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = (u128::from(values.lo), u128::from(values.hi));
    (usize::from(width)..=20)
        .filter_map(|len| {
            let floor = if len == usize::from(width) {
                0
            } else {
                10u128.pow(len as u32 - 1)
            };
            Digits::new(len, lo.max(floor), hi, None)
        })
        .collect()
}

/// Where one side is: at atom `atom`, in digit run `run`, `k` digits read, and whether
/// those equal the run's lower (`tl`) and upper (`th`) end so far. `atom == len`: the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    atom: u32,
    run: u8,
    k: u8,
    tl: bool,
    th: bool,
}

impl Lang {
    /// The states at the start of atom `i` (one per digit run; the end past the last atom).
    fn enter(&self, i: usize, out: &mut Vec<State>) {
        let at = |run: usize, tight: bool| State {
            atom: i as u32,
            run: run as u8,
            k: 0,
            tl: tight,
            th: tight,
        };
        match self.atoms.get(i) {
            Some(Atom::Num(runs)) => out.extend((0..runs.len()).map(|r| at(r, true))),
            Some(Atom::Lit(_)) | None => out.push(at(0, false)),
        }
    }

    fn is_end(&self, s: State) -> bool {
        s.atom as usize == self.atoms.len()
    }

    fn run(&self, s: State) -> Option<&Digits> {
        match self.atoms.get(s.atom as usize) {
            Some(Atom::Num(runs)) => runs.get(usize::from(s.run)),
            _ => None,
        }
    }

    /// The characters `s` may read next, as an inclusive range; `None` at the end.
    fn next_chars(&self, s: State) -> Option<(u8, u8)> {
        match self.atoms.get(s.atom as usize)? {
            Atom::Lit(c) => Some((*c, *c)),
            Atom::Num(_) => {
                let d = self.run(s)?;
                let k = usize::from(s.k);
                let lo = if s.tl { d.lo[k] } else { 0 };
                let hi = if s.th { d.hi[k] } else { 9 };
                Some((b'0' + lo, b'0' + hi))
            }
        }
    }

    /// The digit `s` would like the example to show next, if any.
    fn preferred(&self, s: State) -> Option<u8> {
        let d = self.run(s)?;
        d.prefer.as_ref().map(|p| b'0' + p[usize::from(s.k)])
    }

    /// The states after `s` reads `c` (which [`Lang::next_chars`] allows).
    fn step(&self, s: State, c: u8, out: &mut Vec<State>) {
        let Some(d) = self.run(s) else {
            self.enter(s.atom as usize + 1, out);
            return;
        };
        let (k, digit) = (usize::from(s.k), c - b'0');
        if k + 1 == d.width() {
            self.enter(s.atom as usize + 1, out);
        } else {
            out.push(State {
                k: s.k + 1,
                tl: s.tl && digit == d.lo[k],
                th: s.th && digit == d.hi[k],
                ..s
            });
        }
    }
}

/// The shortest string in both languages (breadth-first over pairs of states).
fn intersect(a: &Lang, b: &Lang) -> Option<String> {
    type Pair = (State, State);
    // Every pair reached, with the pair it was reached from and the character read.
    let mut seen: HashMap<Pair, Option<(Pair, u8)>> = HashMap::new();
    let mut queue = VecDeque::new();
    let (mut starts_a, mut starts_b) = (Vec::new(), Vec::new());
    a.enter(0, &mut starts_a);
    b.enter(0, &mut starts_b);
    for &sa in &starts_a {
        for &sb in &starts_b {
            if seen.insert((sa, sb), None).is_none() {
                queue.push_back((sa, sb));
            }
        }
    }
    let (mut next_a, mut next_b) = (Vec::new(), Vec::new());
    while let Some(pair @ (sa, sb)) = queue.pop_front() {
        if a.is_end(sa) && b.is_end(sb) {
            return Some(path(&seen, pair));
        }
        let (Some((la, ha)), Some((lb, hb))) = (a.next_chars(sa), b.next_chars(sb)) else {
            continue;
        };
        let (lo, hi) = (la.max(lb), ha.min(hb));
        if lo > hi {
            continue;
        }
        let first = a
            .preferred(sa)
            .or(b.preferred(sb))
            .filter(|p| (lo..=hi).contains(p));
        let chars = first
            .into_iter()
            .chain((lo..=hi).filter(|c| Some(*c) != first));
        for c in chars {
            next_a.clear();
            next_b.clear();
            a.step(sa, c, &mut next_a);
            b.step(sb, c, &mut next_b);
            for &na in &next_a {
                for &nb in &next_b {
                    if let std::collections::hash_map::Entry::Vacant(e) = seen.entry((na, nb)) {
                        e.insert(Some((pair, c)));
                        queue.push_back((na, nb));
                    }
                }
            }
        }
    }
    None
}

/// The characters read on the way to `end`.
fn path<P: Copy + Eq + std::hash::Hash>(seen: &HashMap<P, Option<(P, u8)>>, end: P) -> String {
    let mut out = Vec::new();
    let mut at = end;
    while let Some(Some((prev, c))) = seen.get(&at) {
        out.push(*c);
        at = *prev;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
