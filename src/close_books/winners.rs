//! The winner of every key of a day: a map from each key to the best rank among its valid rows
//! and how many valid rows it has, built in one pass over the day's key and order columns and
//! consulted in a second pass over the whole rows, which keeps exactly each key's winner.
//!
//! Keys and ranks are stored as bytes: a key as its values' bytes (equal keys, equal bytes), a
//! rank as arrow's row format of the winner order, so that the lesser bytes are the better rank
//! exactly as a sort by that order would put them first. The map is split into shards by the
//! key's hash; a batch's rows are grouped by shard and each shard is locked once per batch, so
//! the workers that offer rows at the same time seldom wait for one another.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

/// Shards of the map (a power of two).
const SHARDS: usize = 64;
/// The first chunk of a shard's arena; chunks double up to [`MAX_CHUNK`].
const FIRST_CHUNK: usize = 64 << 10;
const MAX_CHUNK: usize = 4 << 20;

/// A key's entry: where its bytes and its best rank's bytes are (one after the other in the
/// shard's arena), how many valid rows it has, whether its winner has been kept.
#[derive(Clone, Copy)]
struct Entry {
    at: u64,
    key_len: u32,
    rank_len: u32,
    rows: u32,
    kept: bool,
}

/// Byte chunks that never move, so entries can point into them.
#[derive(Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
    capacity: usize,
}

impl Arena {
    fn push(&mut self, key: &[u8], rank: &[u8]) -> u64 {
        let len = key.len() + rank.len();
        let room = self.chunks.last().map_or(0, |c| c.capacity() - c.len());
        if room < len {
            let next = self.chunks.last().map_or(FIRST_CHUNK, |c| (c.capacity() * 2).min(MAX_CHUNK));
            let chunk = Vec::with_capacity(next.max(len));
            self.capacity += chunk.capacity();
            self.chunks.push(chunk);
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let at = ((index as u64) << 32) | chunk.len() as u64;
        chunk.extend_from_slice(key);
        chunk.extend_from_slice(rank);
        at
    }

    fn get(&self, at: u64, len: usize) -> &[u8] {
        let start = (at & 0xffff_ffff) as usize;
        &self.chunks[(at >> 32) as usize][start..start + len]
    }

    fn get_mut(&mut self, at: u64, len: usize) -> &mut [u8] {
        let start = (at & 0xffff_ffff) as usize;
        &mut self.chunks[(at >> 32) as usize][start..start + len]
    }
}

#[derive(Default)]
struct Shard {
    table: hashbrown::HashTable<Entry>,
    arena: Arena,
}

impl Shard {
    fn bytes(&self) -> usize {
        self.arena.capacity + self.table.capacity() * (std::mem::size_of::<Entry>() + 1)
    }
}

/// The hasher of a day's keys (one per day, shared by its rounds).
pub(super) type Hasher = hashbrown::DefaultHashBuilder;

/// The map would outgrow its budget: the day's keys must be shared among more rounds.
#[derive(Debug)]
pub(super) struct OverBudget;

/// Each key's winner, for the keys of one round (a share of the keys by hash).
pub(super) struct Winners {
    hasher: Hasher,
    shards: Vec<Mutex<Shard>>,
    round: u64,
    rounds: u64,
    bytes: AtomicU64,
    budget: u64,
}

impl Winners {
    /// An empty map for round `round` of `rounds`, which may hold `budget` bytes; `expected`
    /// keys (if known) are made room for at once. Every round of a day hashes with the same
    /// `hasher`, so that each key belongs to exactly one round.
    pub fn new(round: u64, rounds: u64, budget: u64, expected: Option<u64>, hasher: Hasher) -> Self {
        let per_shard = expected.map_or(0, |keys| (keys / rounds.max(1)) as usize / SHARDS);
        let shards: Vec<Mutex<Shard>> = (0..SHARDS)
            .map(|_| Mutex::new(Shard { table: hashbrown::HashTable::with_capacity(per_shard), ..Default::default() }))
            .collect();
        let bytes = shards.iter().map(|s| s.lock().expect("new").bytes() as u64).sum();
        Winners { hasher, shards, round, rounds: rounds.max(1), bytes: AtomicU64::new(bytes), budget }
    }

    /// The hash of each key.
    pub fn hash_keys(&self, keys: &KeyBytes, hashes: &mut Vec<u64>) {
        hashes.clear();
        hashes.extend((0..keys.len()).map(|row| self.hasher.hash_one(keys.get(row))));
    }

    /// Whether a key of this hash belongs to this map's round.
    pub fn in_round(&self, hash: u64) -> bool {
        (hash >> 48) % self.rounds == self.round
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).table.len() as u64).sum()
    }

    /// Contested keys whose winner was not kept by [`Winners::settle_contested`] (none once the
    /// whole day was read again).
    pub fn unsettled(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).table.iter().filter(|e| !e.kept).count() as u64)
            .sum()
    }

    fn shard_of(hash: u64) -> usize {
        // Bits that neither hashbrown's bucket index (the low bits) nor its control byte (the
        // top seven) nor the round (bits 48..) use.
        ((hash >> 40) as usize) & (SHARDS - 1)
    }

    /// `rows` grouped by shard: (shard, its rows) in shard order.
    fn by_shard(rows: &[u32], hashes: &[u64], grouped: &mut Vec<u32>) -> [usize; SHARDS + 1] {
        let mut starts = [0usize; SHARDS + 1];
        for &row in rows {
            starts[Self::shard_of(hashes[row as usize]) + 1] += 1;
        }
        for s in 0..SHARDS {
            starts[s + 1] += starts[s];
        }
        let mut next = starts;
        grouped.clear();
        grouped.resize(rows.len(), 0);
        for &row in rows {
            let s = Self::shard_of(hashes[row as usize]);
            grouped[next[s]] = row;
            next[s] += 1;
        }
        starts
    }

    /// Offers valid rows of this round (`rows`, indices into `hashes`, `keys` and `ranks`):
    /// each becomes its key's best rank if it is better than the best so far (a tie keeps the
    /// earlier one). Fails when the map would hold more than its budget.
    pub fn offer(
        &self,
        rows: &[u32],
        hashes: &[u64],
        keys: &KeyBytes,
        ranks: &arrow::row::Rows,
        grouped: &mut Vec<u32>,
    ) -> Result<(), OverBudget> {
        let starts = Self::by_shard(rows, hashes, grouped);
        for s in 0..SHARDS {
            let group = &grouped[starts[s]..starts[s + 1]];
            if group.is_empty() {
                continue;
            }
            let mut shard = self.shards[s].lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.bytes();
            let Shard { table, arena } = &mut *shard;
            for &row in group {
                let (hash, key, rank) = (hashes[row as usize], keys.get(row as usize), ranks.row(row as usize));
                let rank = rank.as_ref();
                match table.find_mut(hash, |e| arena.get(e.at, e.key_len as usize) == key) {
                    Some(e) => {
                        e.rows = e.rows.saturating_add(1);
                        let best = arena.get(e.at + e.key_len as u64, e.rank_len as usize);
                        if rank < best {
                            if rank.len() <= e.rank_len as usize {
                                arena.get_mut(e.at + e.key_len as u64, rank.len()).copy_from_slice(rank);
                            } else {
                                e.at = arena.push(key, rank);
                            }
                            e.rank_len = rank.len() as u32;
                        }
                    }
                    None => {
                        let at = arena.push(key, rank);
                        let entry =
                            Entry { at, key_len: key.len() as u32, rank_len: rank.len() as u32, rows: 1, kept: false };
                        table.insert_unique(hash, entry, |e| self.hasher.hash_one(arena.get(e.at, e.key_len as usize)));
                    }
                }
            }
            let grown = shard.bytes() as u64 - before as u64;
            if grown > 0 && self.bytes.fetch_add(grown, Ordering::Relaxed) + grown > self.budget {
                return Err(OverBudget);
            }
        }
        Ok(())
    }

    /// The map of the keys that have more than one valid row (they are contested), and how
    /// many keys there are in all. The rows pass needs only these: a valid row whose key is not
    /// contested is its key's only one, so the rows pass looks up a few keys in a small map
    /// rather than every key in the whole one.
    pub fn into_contested(self) -> (Winners, u64) {
        let mut keys = 0;
        let mut shards = Vec::with_capacity(SHARDS);
        let mut bytes = 0;
        for shard in self.shards {
            let shard = shard.into_inner().unwrap_or_else(|p| p.into_inner());
            keys += shard.table.len() as u64;
            let mut kept = Shard::default();
            for e in shard.table.iter().filter(|e| e.rows > 1) {
                let key = shard.arena.get(e.at, e.key_len as usize);
                let rank = shard.arena.get(e.at + e.key_len as u64, e.rank_len as usize);
                let at = kept.arena.push(key, rank);
                let hash = self.hasher.hash_one(key);
                let arena = &kept.arena;
                kept.table.insert_unique(hash, Entry { at, ..*e }, |e| {
                    self.hasher.hash_one(arena.get(e.at, e.key_len as usize))
                });
            }
            bytes += kept.bytes() as u64;
            shards.push(Mutex::new(kept));
        }
        let contested = Winners {
            hasher: self.hasher,
            shards,
            round: self.round,
            rounds: self.rounds,
            bytes: AtomicU64::new(bytes),
            budget: self.budget,
        };
        (contested, keys)
    }

    /// On the map of [`Winners::into_contested`]: marks in `keep` the valid rows of this round
    /// (`rows`) whose key is not contested (each its key's only valid row), and lists in
    /// `contested` those whose contested key has no winner kept yet, to be judged by
    /// [`Winners::settle_contested`] with their rank.
    pub fn settle(
        &self,
        rows: &[u32],
        hashes: &[u64],
        keys: &KeyBytes,
        keep: &mut [bool],
        contested: &mut Vec<u32>,
        grouped: &mut Vec<u32>,
    ) {
        contested.clear();
        let starts = Self::by_shard(rows, hashes, grouped);
        for s in 0..SHARDS {
            let group = &grouped[starts[s]..starts[s + 1]];
            if group.is_empty() {
                continue;
            }
            let shard = self.shards[s].lock().unwrap_or_else(|p| p.into_inner());
            for &row in group {
                let key = keys.get(row as usize);
                match shard.table.find(hashes[row as usize], |e| shard.arena.get(e.at, e.key_len as usize) == key) {
                    None => keep[row as usize] = true,
                    Some(e) if !e.kept => contested.push(row),
                    Some(_) => {}
                }
            }
        }
    }

    /// Marks in `keep` the rows of `contested` whose rank (`ranks[i]` for `contested[i]`) is
    /// their key's best; the first such row of a key is kept, any later tie is not.
    pub fn settle_contested(
        &self,
        contested: &[u32],
        hashes: &[u64],
        keys: &KeyBytes,
        ranks: &arrow::row::Rows,
        keep: &mut [bool],
    ) {
        for (i, &row) in contested.iter().enumerate() {
            let hash = hashes[row as usize];
            let key = keys.get(row as usize);
            let mut shard = self.shards[Self::shard_of(hash)].lock().unwrap_or_else(|p| p.into_inner());
            let Shard { table, arena } = &mut *shard;
            let Some(e) = table.find_mut(hash, |e| arena.get(e.at, e.key_len as usize) == key) else { continue };
            if !e.kept && arena.get(e.at + e.key_len as u64, e.rank_len as usize) == ranks.row(i).as_ref() {
                e.kept = true;
                keep[row as usize] = true;
            }
        }
    }
}

/// The converter of the winner order's columns into rank bytes: every column descending,
/// NULLs last, so the lesser bytes are the better rank.
pub(super) fn rank_converter(types: &[DataType]) -> Result<RowConverter, ArrowError> {
    let options = arrow::compute::SortOptions { descending: true, nulls_first: false };
    RowConverter::new(types.iter().map(|t| SortField::new_with_options(t.clone(), options)).collect())
}

/// The keys of a batch's rows as bytes: equal keys, equal bytes. A string or binary column adds
/// its value's bytes (after their length when the key has several columns); any other column
/// adds its value in arrow's row format.
#[derive(Default)]
pub(super) struct KeyBytes {
    data: Vec<u8>,
    offsets: Vec<usize>,
    converters: Vec<Option<RowConverter>>,
}

impl KeyBytes {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn get(&self, row: usize) -> &[u8] {
        &self.data[self.offsets[row]..self.offsets[row + 1]]
    }

    /// Encodes the rows of `columns` (the key's columns of one batch).
    pub fn encode(&mut self, columns: &[ArrayRef]) -> Result<(), ArrowError> {
        let rows = columns.first().map_or(0, |c| c.len());
        if self.converters.len() != columns.len() {
            self.converters = columns
                .iter()
                .map(|c| match bytes_of(c.as_ref()) {
                    Some(_) => Ok(None),
                    None => RowConverter::new(vec![SortField::new(c.data_type().clone())]).map(Some),
                })
                .collect::<Result<_, _>>()?;
        }
        let converted = columns
            .iter()
            .zip(&self.converters)
            .map(|(c, conv)| conv.as_ref().map(|conv| conv.convert_columns(std::slice::from_ref(c))).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let readers: Vec<_> = columns.iter().map(|c| bytes_of(c.as_ref())).collect();
        let prefixed = columns.len() > 1;
        self.data.clear();
        self.offsets.clear();
        self.offsets.push(0);
        for row in 0..rows {
            for (i, column) in columns.iter().enumerate() {
                match (&readers[i], &converted[i]) {
                    (Some(read), _) => {
                        if column.is_null(row) {
                            self.data.extend_from_slice(&u32::MAX.to_le_bytes());
                        } else {
                            let value = read(row);
                            if prefixed {
                                self.data.extend_from_slice(&(value.len() as u32).to_le_bytes());
                            }
                            self.data.extend_from_slice(value);
                        }
                    }
                    (None, Some(rows)) => self.data.extend_from_slice(rows.row(row).as_ref()),
                    (None, None) => unreachable!("a converter for every column that is not bytes"),
                }
            }
            self.offsets.push(self.data.len());
        }
        Ok(())
    }
}

/// A reader of a string or binary column's value bytes (None for other types).
fn bytes_of<'a>(column: &'a dyn Array) -> Option<Box<dyn Fn(usize) -> &'a [u8] + 'a>> {
    Some(match column.data_type() {
        DataType::Utf8 => {
            let a = column.as_string::<i32>();
            Box::new(move |i| a.value(i).as_bytes())
        }
        DataType::LargeUtf8 => {
            let a = column.as_string::<i64>();
            Box::new(move |i| a.value(i).as_bytes())
        }
        DataType::Utf8View => {
            let a = column.as_string_view();
            Box::new(move |i| a.value(i).as_bytes())
        }
        DataType::Binary => {
            let a = column.as_binary::<i32>();
            Box::new(move |i| a.value(i))
        }
        DataType::LargeBinary => {
            let a = column.as_binary::<i64>();
            Box::new(move |i| a.value(i))
        }
        DataType::BinaryView => {
            let a = column.as_binary_view();
            Box::new(move |i| a.value(i))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn keys(values: &[&str]) -> KeyBytes {
        let mut k = KeyBytes::default();
        k.encode(&[Arc::new(StringArray::from(values.to_vec())) as ArrayRef]).unwrap();
        k
    }

    fn ranks(times: &[i64]) -> arrow::row::Rows {
        let c = rank_converter(&[DataType::Int64]).unwrap();
        c.convert_columns(&[Arc::new(Int64Array::from(times.to_vec())) as ArrayRef]).unwrap()
    }

    /// Offers the rows in `offers` (two batches), then settles a batch of them again; returns
    /// which rows of the settled batch were kept.
    fn run(ids: &[&str], times: &[i64], budget: u64) -> Result<Vec<bool>, OverBudget> {
        let w = Winners::new(0, 1, budget, None, Hasher::default());
        let k = keys(ids);
        let r = ranks(times);
        let mut hashes = Vec::new();
        w.hash_keys(&k, &mut hashes);
        let rows: Vec<u32> = (0..ids.len() as u32).collect();
        let (a, b) = rows.split_at(ids.len() / 2);
        let mut grouped = Vec::new();
        w.offer(a, &hashes, &k, &r, &mut grouped)?;
        w.offer(b, &hashes, &k, &r, &mut grouped)?;
        let (w, keys) = w.into_contested();
        let mut keep = vec![false; ids.len()];
        let mut contested = Vec::new();
        w.settle(&rows, &hashes, &k, &mut keep, &mut contested, &mut grouped);
        let take = arrow::array::UInt32Array::from(contested.clone());
        let times = arrow::compute::take(&Int64Array::from(times.to_vec()), &take, None).unwrap();
        let contested_ranks = rank_converter(&[DataType::Int64]).unwrap().convert_columns(&[times]).unwrap();
        w.settle_contested(&contested, &hashes, &k, &contested_ranks, &mut keep);
        assert_eq!(w.unsettled(), 0, "every key's winner was kept");
        assert_eq!(keep.iter().filter(|k| **k).count() as u64, keys);
        Ok(keep)
    }

    #[test]
    fn the_latest_row_of_each_key_wins_once_and_ties_keep_one() {
        let ids = ["a", "b", "a", "c", "b", "a", "c", "d"];
        let times = [1, 5, 3, 2, 5, 2, 9, 0];
        let keep = run(&ids, &times, u64::MAX).unwrap();
        // a: time 3 (row 2); b: a tie at 5, the first seen again (row 1); c: 9 (row 6); d alone.
        assert_eq!(keep, [false, true, true, false, false, false, true, true]);
    }

    #[test]
    fn a_better_rank_longer_than_the_stored_one_is_stored_anew() {
        let w = Winners::new(0, 1, u64::MAX, Some(4), Hasher::default());
        let k = keys(&["k", "k"]);
        let c = rank_converter(&[DataType::Utf8]).unwrap();
        // Descending: "zz" ranks before "a".
        let r =
            c.convert_columns(&[Arc::new(StringArray::from(vec!["a", "zzzzzzzzzzzzzzzzzzzzzz"])) as ArrayRef]).unwrap();
        let mut hashes = Vec::new();
        w.hash_keys(&k, &mut hashes);
        let mut grouped = Vec::new();
        w.offer(&[0], &hashes, &k, &r, &mut grouped).unwrap();
        w.offer(&[1], &hashes, &k, &r, &mut grouped).unwrap();
        let (w, keys) = w.into_contested();
        assert_eq!((keys, w.len()), (1, 1));
        let mut keep = vec![false; 2];
        let mut contested = Vec::new();
        w.settle(&[0, 1], &hashes, &k, &mut keep, &mut contested, &mut grouped);
        assert_eq!(contested, [0, 1]);
        w.settle_contested(&contested, &hashes, &k, &r, &mut keep);
        assert_eq!(keep, [false, true]);
    }

    #[test]
    fn a_map_over_its_budget_says_so() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        let times = vec![0; ids.len()];
        assert!(run(&ids, &times, 1 << 20).is_err());
        assert_eq!(run(&ids, &times, 64 << 20).unwrap().iter().filter(|k| **k).count(), 20_000);
    }

    #[test]
    fn rounds_share_the_keys() {
        let ids: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        let k = keys(&ids);
        let hasher = Hasher::default();
        let rounds: Vec<Winners> = (0..3).map(|r| Winners::new(r, 3, u64::MAX, None, hasher.clone())).collect();
        let hashes: Vec<Vec<u64>> = rounds
            .iter()
            .map(|w| {
                let mut h = Vec::new();
                w.hash_keys(&k, &mut h);
                h
            })
            .collect();
        let mut counts = [0; 3];
        for row in 0..ids.len() {
            let owners: Vec<usize> = (0..3).filter(|&r| rounds[r].in_round(hashes[r][row])).collect();
            assert_eq!(owners.len(), 1, "each key belongs to exactly one round");
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|&c| c > 250), "{counts:?}");
    }

    #[test]
    fn keys_of_several_columns_do_not_run_into_each_other() {
        let mut k = KeyBytes::default();
        let a: ArrayRef = Arc::new(StringArray::from(vec!["ab", "a"]));
        let b: ArrayRef = Arc::new(StringArray::from(vec!["c", "bc"]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 1]));
        k.encode(&[a, b, n]).unwrap();
        assert_ne!(k.get(0), k.get(1));
    }
}
