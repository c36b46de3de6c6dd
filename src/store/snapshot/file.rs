//! The snapshot file format: streamed to and from disk, never held whole in memory.
//!
//! ```text
//! "CNCDSNAP" | u32 version | u32 header_len | header (bincode)
//! { 0x01 | u32 key_len | key | u32 value_len | value }*      value = revision + JSON
//! { 0x02 | u32 32 | token digest | u32 len | token record }*  (format 2 on)
//! 0x00 | sha256 of every byte before it
//! ```
//!
//! Format 1 had no token records. Format 3's header adds the cluster's log format and
//! applied cluster time, and its values may be full key records (`store::keys`). This build
//! reads all three; it writes 3 once the cluster switched to log format 2 and 2 before,
//! so that a member running an older build can install what a newer leader sends until then.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::Error;

const MAGIC: &[u8; 8] = b"CNCDSNAP";
/// The newest snapshot format this build reads and writes.
pub const SNAPSHOT_FORMAT: u32 = 3;
/// What a cluster still on log format 1 writes (no cluster format or time in the header).
const FORMAT_BEFORE_SWITCH: u32 = 2;
/// Oldest format this build still reads.
const OLDEST_READABLE_FORMAT: u32 = 1;
const TAG_RECORD: u8 = 1;
const TAG_TOKEN: u8 = 2;
const TAG_END: u8 = 0;
/// Bounds a header or record read from an untrusted file before allocating for it.
const MAX_FIELD_BYTES: u32 = 64 * 1024 * 1024;

/// One record of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A key and its stored value.
    Kv(Vec<u8>, Vec<u8>),
    /// A token digest and its record (bincode).
    Token(Vec<u8>, Vec<u8>),
}

/// State-machine metadata carried in every snapshot, beside the key space.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotHeader {
    pub revision: u64,
    pub cluster_id: Option<Uuid>,
    pub key_count: u64,
    /// The cluster's log format (1 in snapshots of format 1 and 2).
    pub cluster_format: u8,
    /// Cluster time of the newest applied entry (0 in snapshots of format 1 and 2).
    pub cluster_time: u64,
}

/// The header as formats 1 and 2 encode it.
#[derive(Serialize, Deserialize)]
struct HeaderV2 {
    revision: u64,
    cluster_id: Option<Uuid>,
    key_count: u64,
}

/// The header as format 3 encodes it.
#[derive(Serialize, Deserialize)]
struct HeaderV3 {
    revision: u64,
    cluster_id: Option<Uuid>,
    key_count: u64,
    cluster_format: u8,
    cluster_time: u64,
}

impl SnapshotHeader {
    /// The file format for this header: 3 once the cluster writes log format 2.
    pub fn file_format(&self) -> u32 {
        if self.cluster_format >= 2 {
            SNAPSHOT_FORMAT
        } else {
            FORMAT_BEFORE_SWITCH
        }
    }

    fn encode(&self) -> Result<Vec<u8>, bincode::Error> {
        if self.file_format() >= 3 {
            bincode::serialize(&HeaderV3 {
                revision: self.revision,
                cluster_id: self.cluster_id,
                key_count: self.key_count,
                cluster_format: self.cluster_format,
                cluster_time: self.cluster_time,
            })
        } else {
            bincode::serialize(&HeaderV2 {
                revision: self.revision,
                cluster_id: self.cluster_id,
                key_count: self.key_count,
            })
        }
    }

    fn decode(format: u32, bytes: &[u8]) -> Result<SnapshotHeader, bincode::Error> {
        if format >= 3 {
            let h: HeaderV3 = crate::binary::decode(bytes)?;
            Ok(SnapshotHeader {
                revision: h.revision,
                cluster_id: h.cluster_id,
                key_count: h.key_count,
                cluster_format: h.cluster_format,
                cluster_time: h.cluster_time,
            })
        } else {
            let h: HeaderV2 = crate::binary::decode(bytes)?;
            Ok(SnapshotHeader {
                revision: h.revision,
                cluster_id: h.cluster_id,
                key_count: h.key_count,
                cluster_format: 1,
                cluster_time: 0,
            })
        }
    }
}

/// Writes a snapshot, hashing as it goes.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hash: Sha256,
    pub records: u64,
}

impl SnapshotWriter {
    pub fn create(path: &Path, header: &SnapshotHeader) -> Result<SnapshotWriter, Error> {
        let file = File::create(path)?;
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            hash: Sha256::new(),
            records: 0,
        };
        let format = header.file_format();
        let header = header.encode().map_err(|e| Error::Corrupt(e.to_string()))?;
        w.put(MAGIC)?;
        w.put(&format.to_be_bytes())?;
        w.put(&(header.len() as u32).to_be_bytes())?;
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hash.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.tagged(TAG_RECORD, key, value)
    }

    pub fn token(&mut self, digest: &[u8], record: &[u8]) -> Result<(), Error> {
        self.tagged(TAG_TOKEN, digest, record)
    }

    fn tagged(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.put(&[tag])?;
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs; the file is complete and durable on return.
    pub fn finish(mut self) -> Result<u64, Error> {
        self.put(&[TAG_END])?;
        let digest = self.hash.clone().finalize();
        self.out.write_all(&digest)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    }
}

/// Reads a snapshot record by record; the checksum is verified when the end is reached,
/// so a caller applies records to a scratch keyspace and keeps it only if `finish` is `Ok`.
pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    hash: Sha256,
    pub header: SnapshotHeader,
    done: bool,
}

impl SnapshotReader<File> {
    pub fn open(path: &Path) -> Result<Self, Error> {
        SnapshotReader::new(File::open(path)?)
    }
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> Result<Self, Error> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(256 * 1024, input),
            hash: Sha256::new(),
            header: SnapshotHeader::default(),
            done: false,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(Error::Corrupt("not a Concord snapshot (bad magic)".into()));
        }
        let version = r.u32()?;
        if !(OLDEST_READABLE_FORMAT..=SNAPSHOT_FORMAT).contains(&version) {
            return Err(Error::Corrupt(format!(
                "snapshot format {version} is not supported (this build reads {OLDEST_READABLE_FORMAT} to {SNAPSHOT_FORMAT})"
            )));
        }
        let header = r.field()?;
        r.header = SnapshotHeader::decode(version, &header)
            .map_err(|e| Error::Corrupt(format!("snapshot header: {e}")))?;
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Corrupt("snapshot is truncated".into())
            } else {
                Error::Io(e)
            }
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn field(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.u32()?;
        if len > MAX_FIELD_BYTES {
            return Err(Error::Corrupt(format!("snapshot field of {len} bytes")));
        }
        // Read what is there rather than allocate what the prefix claims: a damaged or
        // hostile file must not make the reader allocate past its own end.
        let mut buf = Vec::new();
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut buf)?;
        if buf.len() < len as usize {
            return Err(Error::Corrupt("snapshot is truncated".into()));
        }
        self.hash.update(&buf);
        Ok(buf)
    }

    /// The next record, or `None` once the verified end is reached.
    pub fn next_record(&mut self) -> Result<Option<Record>, Error> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            TAG_RECORD => {
                let key = self.field()?;
                let value = self.field()?;
                Ok(Some(Record::Kv(key, value)))
            }
            TAG_TOKEN => {
                let digest = self.field()?;
                let record = self.field()?;
                Ok(Some(Record::Token(digest, record)))
            }
            TAG_END => {
                let expected = self.hash.clone().finalize();
                let mut found = [0u8; 32];
                self.input
                    .read_exact(&mut found)
                    .map_err(|_| Error::Corrupt("snapshot is truncated (no checksum)".into()))?;
                if found[..] != expected[..] {
                    return Err(Error::Corrupt("snapshot checksum mismatch".into()));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(Error::Corrupt(format!("snapshot record tag {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(path: &Path) {
        let header = SnapshotHeader {
            revision: 9,
            cluster_id: Some(Uuid::new_v4()),
            key_count: 100,
            ..Default::default()
        };
        let mut w = SnapshotWriter::create(path, &header).unwrap();
        w.token(&[7u8; 32], b"rec").unwrap();
        for i in 0..100u32 {
            w.record(format!("k{i:03}").as_bytes(), &i.to_be_bytes())
                .unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let mut r = SnapshotReader::open(&path).unwrap();
        assert_eq!(r.header.revision, 9);
        let mut n = 0;
        while let Some(rec) = r.next_record().unwrap() {
            match rec {
                Record::Kv(k, _) => {
                    assert_eq!(k, format!("k{n:03}").into_bytes());
                    n += 1;
                }
                Record::Token(d, r) => assert_eq!((d, r), (vec![7u8; 32], b"rec".to_vec())),
            }
        }
        assert_eq!(n, 100);

        // Flip one byte in the middle: the checksum must catch it.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = SnapshotReader::open(&path).unwrap();
        let res = loop {
            match r.next_record() {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert!(res.is_err());

        // Truncate: refused too.
        write_sample(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let mut r = SnapshotReader::open(&path).unwrap();
        let res = loop {
            match r.next_record() {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert!(res.is_err());
    }
}
