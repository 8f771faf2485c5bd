/**
 * The numbers behind Parquet's enum names (parquet.thrift), for the parts of the format the shard
 * codec writes and checks. hyparquet hands the footer over with names; page headers and our own
 * footers use the numbers.
 */
export const PARQUET_MAGIC = 0x31524150; // "PAR1" read as a little-endian u32

export const PhysicalType = { INT32: 1, FLOAT: 4, FIXED_LEN_BYTE_ARRAY: 7 } as const;
export const Repetition = { REQUIRED: 0, OPTIONAL: 1, REPEATED: 2 } as const;
export const ConvertedType = { LIST: 3 } as const;
export const Encoding = { PLAIN: 0, PLAIN_DICTIONARY: 2, RLE: 3, RLE_DICTIONARY: 8 } as const;
export const PageType = { DATA_PAGE: 0, DICTIONARY_PAGE: 2, DATA_PAGE_V2: 3 } as const;
export const Codec = { UNCOMPRESSED: 0, SNAPPY: 1 } as const;

/** LogicalType union member ids (the only one a shard uses). */
export const LogicalTypeField = { FLOAT16: 15 } as const;

export type ShardCodec = keyof typeof Codec;

/**
 * Data pages hold about this many bytes of values (split at row boundaries), as hyparquet-writer
 * and most writers do, so that other readers decode a shard a megabyte at a time.
 */
export const PAGE_BYTES = 1 << 20;

/** Whether typed-array views already are Parquet's little-endian layout. */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
