//! The mapping rule by rule: every decoded value is compared with what the prost-reflect view of
//! the same bytes says under PROTOBUF_MAPPING, for hand-built and for random messages.

mod common;

use common::{batch_rows, compile, first_difference, oracle_row, random_message, Rng};
use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage};
use protolake::decode::{DecodeOptions, Decoder};

fn decoder(file: &str, message: &str) -> (Decoder, prost_reflect::DescriptorPool) {
    let (bytes, pool) = compile(file);
    let d = Decoder::from_descriptor_set(&bytes, message, &DecodeOptions::default()).expect("plans");
    (d, pool)
}

/// prost-reflect's reading of the bytes a message encodes to: the oracle's input.
fn view(m: &DynamicMessage) -> DynamicMessage {
    DynamicMessage::decode(m.descriptor(), m.encode_to_vec().as_slice())
        .expect("prost-reflect decodes its own encoding")
}

#[test]
fn random_proto3_messages_match_the_oracle() {
    let (mut d, pool) = decoder("mapping3.proto", "pl.test.Everything");
    let desc = pool.get_message_by_name("pl.test.Everything").unwrap();
    let mut rng = Rng::new(7);
    let messages: Vec<DynamicMessage> = (0..400).map(|_| view(&random_message(&desc, &mut rng, 0, 3))).collect();
    for m in &messages {
        d.decode(&m.encode_to_vec()).unwrap_or_else(|e| panic!("{e} for {m:?}"));
    }
    let batch = d.flush().unwrap();
    let rows = batch_rows(&batch);
    assert_eq!(rows.len(), messages.len());
    for (i, (row, m)) in rows.iter().zip(&messages).enumerate() {
        let expected = oracle_row(m, batch.schema().fields());
        if let Some(d) = first_difference(row, &expected, "") {
            panic!("row {i}: {d}\nmessage: {m:?}");
        }
    }
}

#[test]
fn random_proto2_messages_match_the_oracle() {
    let (mut d, pool) = decoder("mapping2.proto", "pl.test2.P2");
    let desc = pool.get_message_by_name("pl.test2.P2").unwrap();
    let mut rng = Rng::new(11);
    for round in 0..300 {
        let m = view(&random_message(&desc, &mut rng, 0, 3));
        d.decode(&m.encode_to_vec()).unwrap_or_else(|e| panic!("round {round}: {e} for {m:?}"));
        let batch = d.flush().unwrap();
        let row = &batch_rows(&batch)[0];
        assert_eq!(row, &oracle_row(&m, batch.schema().fields()), "round {round}: {m:?}");
    }
}

#[test]
fn messages_of_several_types_after_one_another_keep_their_rows_apart() {
    let (mut d, pool) = decoder("mapping3.proto", "pl.test.Everything");
    let desc = pool.get_message_by_name("pl.test.Everything").unwrap();
    let mut rng = Rng::new(99);
    let mut expected = Vec::new();
    for _ in 0..3 {
        for _ in 0..50 {
            let m = view(&random_message(&desc, &mut rng, 0, 2));
            d.decode(&m.encode_to_vec()).unwrap();
            expected.push(m);
        }
        let batch = d.flush().unwrap();
        let rows = batch_rows(&batch);
        assert_eq!(rows.len(), expected.len());
        for (row, m) in rows.iter().zip(&expected) {
            if let Some(d) = first_difference(row, &oracle_row(m, batch.schema().fields()), "") {
                panic!("{d}");
            }
        }
        expected.clear();
    }
    let _ = desc.full_name();
}
