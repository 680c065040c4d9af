//! Spark-style DDL text of a Delta schema: `name TYPE [NOT NULL]` per column, the text Spark's
//! `StructType.toDDL` gives (one column per line here, so a contract diff reads line by line).
//! Names are backquoted when they are not plain identifiers.

use arrow::datatypes::{DataType, Field, Schema};

/// The DDL of `schema`'s columns (already in Delta storage types, see [`super::delta_schema`]).
pub fn to_ddl(schema: &Schema) -> String {
    let mut out = String::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str(&quote(f.name()));
        out.push(' ');
        out.push_str(&type_ddl(f.data_type()));
        if !f.is_nullable() {
            out.push_str(" NOT NULL");
        }
    }
    out.push('\n');
    out
}

/// The SQL name of one type, as Spark's `DataType.sql` writes it.
pub fn type_ddl(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BINARY".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP_NTZ".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields.iter().map(|f| struct_member(f)).collect();
            format!("STRUCT<{}>", inner.join(", "))
        }
        DataType::List(element) => format!("ARRAY<{}>", type_ddl(element.data_type())),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                format!("MAP<{}, {}>", type_ddl(kv[0].data_type()), type_ddl(kv[1].data_type()))
            }
            other => format!("MAP<{other}>"),
        },
        other => format!("{other}"),
    }
}

fn struct_member(f: &Field) -> String {
    let not_null = if f.is_nullable() { "" } else { " NOT NULL" };
    format!("{}: {}{}", quote(f.name()), type_ddl(f.data_type()), not_null)
}

/// Backquotes a name unless it is a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`).
fn quote(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Fields, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn prints_nested_types_like_spark() {
        let inner = Fields::from(vec![Field::new("id", DataType::Int32, false), Field::new("a b", DataType::Utf8, true)]);
        let entries = Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Int64, false)]);
        let schema = Schema::new(vec![
            Field::new("ad_id", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("s", DataType::Struct(inner), true),
            Field::new("tags", DataType::List(Arc::new(Field::new("element", DataType::Utf8, false))), true),
            Field::new(
                "m",
                DataType::Map(Arc::new(Field::new("key_value", DataType::Struct(entries), false)), false),
                true,
            ),
            Field::new("u", DataType::Decimal128(20, 0), true),
        ]);
        assert_eq!(
            to_ddl(&schema),
            "ad_id STRING NOT NULL,\nts TIMESTAMP,\ns STRUCT<id: INT NOT NULL, `a b`: STRING>,\n\
             tags ARRAY<STRING>,\nm MAP<STRING, BIGINT>,\nu DECIMAL(20,0)\n"
        );
    }
}
