//! The hub's forwarding path: a batch walked for its record boundaries gives
//! the records prost would decode, an envelope spliced around a record's
//! bytes decodes equal to the one prost builds, and a damaged frame is
//! accepted or refused exactly as prost accepts or refuses it.

use bytes::{Bytes, BytesMut};
use herd_codec::proto::{
    AgentMessage, Batch, Envelope, EnvelopeBatch, Pong, Record, agent_message,
};
use herd_codec::{AgentFrame, CodecError, EnvelopeIdentity, FrameBody, RawBatch, WireMessage};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use prost::Message as _;

fn text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

prop_compose! {
    fn record()(data_type in any::<u32>(), timestamp_ms in any::<i64>(), source in text(),
                fields in hash_map(text(), text(), 0..4),
                body in vec(any::<u8>(), 0..64)) -> Record {
        Record { data_type, timestamp_ms, source, fields, body: body.into() }
    }
}

prop_compose! {
    fn identity()(agent_id in text(), hostname in text(), intranet_ipv4 in vec(text(), 0..3),
                  intranet_ipv6 in vec(text(), 0..3), agent_version in text(),
                  hub_id in text()) -> Envelope {
        Envelope { agent_id, hostname, intranet_ipv4, intranet_ipv6, agent_version, hub_id,
                   ..Envelope::default() }
    }
}

fn batch_frame(seq: u64, records: Vec<Record>) -> Bytes {
    AgentMessage::from(Batch { seq, records })
        .encode_to_vec()
        .into()
}

fn walked(body: Bytes) -> RawBatch {
    match AgentFrame::decode_frame(body) {
        Ok(AgentFrame::Batch(batch)) => batch,
        other => panic!("expected a batch, got {other:?}"),
    }
}

/// What prost makes of a frame, in the forwarding path's terms.
fn prost_view(body: &Bytes) -> Result<Result<Batch, agent_message::Kind>, ()> {
    match AgentMessage::decode(body.clone()) {
        Ok(AgentMessage {
            kind: Some(agent_message::Kind::Batch(batch)),
        }) => Ok(Ok(batch)),
        Ok(AgentMessage { kind: Some(other) }) => Ok(Err(other)),
        Ok(AgentMessage { kind: None }) | Err(_) => Err(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn walked_records_are_the_records_prost_decodes(seq in any::<u64>(),
                                                    records in vec(record(), 0..8)) {
        let frame = batch_frame(seq, records.clone());
        let batch = walked(frame.clone());
        prop_assert_eq!(batch.seq, seq);
        prop_assert_eq!(batch.frame_bytes, frame.len());
        prop_assert_eq!(batch.records.len(), records.len());
        for (raw, record) in batch.records.iter().zip(&records) {
            prop_assert_eq!(raw.data_type, record.data_type);
            prop_assert_eq!(&raw.decode().expect("a walked record decodes"), record);
        }
    }

    #[test]
    fn spliced_envelopes_decode_equal_to_prost_built_ones(
        identity in identity(), received_at_ms in any::<i64>(), seq in any::<u64>(),
        records in vec(record(), 1..6),
    ) {
        let prefix = EnvelopeIdentity::new(&identity);
        let batch = walked(batch_frame(seq, records.clone()));
        for (index, (raw, record)) in batch.records.iter().zip(records).enumerate() {
            let index = index as u32;
            let mut spliced = BytesMut::new();
            prefix.encode(received_at_ms, seq, index, &raw.bytes, &mut spliced);
            prop_assert_eq!(spliced.len(), prefix.encoded_len(received_at_ms, seq, index, raw.bytes.len()));
            let expected = Envelope {
                received_at_ms,
                seq,
                index,
                record: Some(record),
                ..identity.clone()
            };
            // Same fields, same values: only their order on the wire differs.
            prop_assert_eq!(spliced.len(), expected.encoded_len());
            prop_assert_eq!(Envelope::decode(spliced.freeze()).expect("a spliced envelope decodes"), expected);
        }
    }

    /// Flipped, inserted and removed bytes: whatever prost accepts is
    /// forwarded with the same records; whatever it refuses is refused.
    #[test]
    fn a_damaged_frame_is_judged_as_prost_judges_it(
        seq in any::<u64>(), records in vec(record(), 0..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut body = batch_frame(seq, records).to_vec();
        for (at, byte, edit) in edits {
            if body.is_empty() {
                body.push(byte);
                continue;
            }
            let at = at.index(body.len());
            match edit {
                0 => body[at] ^= byte | 1,
                1 => body.insert(at, byte),
                _ => { body.remove(at); }
            }
        }
        let body = Bytes::from(body);
        match (AgentFrame::decode_frame(body.clone()), prost_view(&body)) {
            (Ok(AgentFrame::Batch(raw)), Ok(Ok(batch))) => {
                prop_assert_eq!(raw.seq, batch.seq);
                let decoded: Vec<Record> = raw.records.iter()
                    .map(|record| record.decode().expect("a forwarded record decodes"))
                    .collect();
                prop_assert_eq!(decoded, batch.records);
            }
            (Ok(AgentFrame::Other(kind)), Ok(Err(expected))) => prop_assert_eq!(*kind, expected),
            (Err(_), Err(())) => {}
            (ours, prost) => prop_assert!(false, "forwarding path says {:?}, prost says {:?}", ours, prost),
        }
    }
}

#[test]
fn a_record_with_a_source_that_is_not_utf8_is_a_clear_decode_error() {
    let mut record = Record {
        data_type: 2000,
        source: "ab".into(),
        ..Record::default()
    }
    .encode_to_vec();
    // The source's bytes follow its tag (0x1a) and length (2).
    let at = record
        .windows(2)
        .position(|pair| pair == [0x1a, 2])
        .expect("source field")
        + 2;
    record[at] = 0xff;
    let mut batch = Vec::new();
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut batch);
    prost::encoding::encode_varint(record.len() as u64, &mut batch);
    batch.extend_from_slice(&record);
    let mut body = Vec::new();
    prost::encoding::bytes::encode(2, &batch, &mut body);

    let error = AgentFrame::decode_frame(body.into()).expect_err("a record with bad UTF-8");
    assert!(
        matches!(error, CodecError::Decode { message_type, .. } if message_type == AgentMessage::NAME),
        "{error}"
    );
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

#[test]
fn a_batch_split_over_two_fields_is_merged_as_protobuf_says() {
    let first = Record {
        data_type: 2000,
        ..Record::default()
    };
    let second = Record {
        data_type: 2001,
        ..Record::default()
    };
    // Two `batch` fields in one AgentMessage: protobuf merges them.
    let mut body = batch_frame(0, vec![first.clone()]).to_vec();
    body.extend_from_slice(&batch_frame(9, vec![second.clone()]));
    let batch = walked(body.into());
    assert_eq!(batch.seq, 9);
    let decoded: Vec<Record> = batch
        .records
        .iter()
        .map(|raw| raw.decode().unwrap())
        .collect();
    assert_eq!(decoded, vec![first, second]);
}

#[test]
fn other_kinds_are_decoded_whole() {
    let body: Bytes = AgentMessage::from(Pong { nonce: 5 }).encode_to_vec().into();
    assert_eq!(
        AgentFrame::decode_frame(body).unwrap(),
        AgentFrame::Other(Box::new(agent_message::Kind::Pong(Pong { nonce: 5 })))
    );
    let error = AgentFrame::decode_frame(Bytes::new()).expect_err("an empty frame has no kind");
    assert!(matches!(error, CodecError::MissingKind { .. }), "{error}");
}

#[test]
fn a_record_is_forwarded_byte_for_byte_unknown_fields_included() {
    let mut record = Record {
        data_type: 2000,
        body: b"payload".to_vec().into(),
        ..Record::default()
    }
    .encode_to_vec();
    // Field 15 (varint) and field 16 (length-delimited): from a newer plugin.
    // Field 16's key is two bytes: (16 << 3 | 2) as a varint.
    record.extend_from_slice(&[15 << 3, 42, 0x82, 0x01, 3, b'n', b'e', b'w']);
    let mut batch = Vec::new();
    prost::encoding::bytes::encode(2, &record, &mut batch);
    let mut body = Vec::new();
    prost::encoding::bytes::encode(2, &batch, &mut body);

    let walked = walked(body.into());
    assert_eq!(&walked.records[0].bytes[..], &record[..]);
    assert_eq!(walked.records[0].data_type, 2000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_spliced_group_decodes_equal_to_a_prost_built_envelope_batch(
        identity in identity(), received_at_ms in any::<i64>(), seq in any::<u64>(),
        records in vec((any::<u32>(), record()), 0..6),
    ) {
        let prefix = EnvelopeIdentity::new(&identity);
        let encoded: Vec<(u32, Vec<u8>)> = records
            .iter()
            .map(|(index, record)| (*index, record.encode_to_vec()))
            .collect();
        let group: Vec<(u32, &[u8])> =
            encoded.iter().map(|(index, bytes)| (*index, &bytes[..])).collect();
        let mut spliced = BytesMut::new();
        prefix.encode_group(received_at_ms, seq, &group, &mut spliced);
        prop_assert_eq!(spliced.len(), prefix.group_len(received_at_ms, seq, &group));
        let expected = EnvelopeBatch {
            agent_id: identity.agent_id.clone(),
            hostname: identity.hostname.clone(),
            intranet_ipv4: identity.intranet_ipv4.clone(),
            intranet_ipv6: identity.intranet_ipv6.clone(),
            agent_version: identity.agent_version.clone(),
            received_at_ms,
            seq,
            index: records.iter().map(|(index, _)| *index).collect(),
            records: records.into_iter().map(|(_, record)| record).collect(),
            hub_id: identity.hub_id.clone(),
        };
        prop_assert_eq!(spliced.len(), expected.encoded_len());
        prop_assert_eq!(EnvelopeBatch::decode(spliced.freeze()).expect("decodes"), expected);
    }
}
